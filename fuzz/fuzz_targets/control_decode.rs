//! Any bytes, as a control message of remote memory from a peer: decoding returns a message
//! or a problem and never panics, and a message it accepts passes the value checks and
//! encodes back to exactly the bytes it came from (nothing was ignored or normalised).

#![no_main]

use anyrdma_core::remote_memory::Control;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(control) = Control::decode(bytes) {
        assert_eq!(control.check(), Ok(()), "accepted {control:?}");
        assert_eq!(
            control.encode(),
            bytes,
            "{control:?} re-encodes differently"
        );
    }
});
