//! A library written against `anyrdma-core` alone, with plain non-generic functions over
//! `QueuePair` (tests/fixtures/plain-library), works on every runtime: write, read and send
//! round trips move the right bytes.

mod support;

use anyrdma::{Access, CqOptions, MessageKind, PollMode, QpOptions, Received};
use anyrdma_fixture_plain_library::{deliver, get, put};
use support::{fill, holds_pattern, within, Pair, Rt};

async fn plain_library_round_trips(rt: Rt) {
    if !support::device_present("plain_library_round_trips") {
        return;
    }
    // Both poll modes: in event mode the library's awaits sleep on the runtime's reactor.
    for poll_mode in [PollMode::Event { spin: 0 }, PollMode::Busy] {
        let pair = Pair::with(
            CqOptions {
                poll_mode,
                ..CqOptions::default()
            },
            QpOptions::default(),
            anyrdma::ConnectOptions::default(),
        );
        let len = 3000;
        let target = pair
            .pd
            .alloc_shared(
                len,
                Access::LOCAL | Access::REMOTE_WRITE | Access::REMOTE_READ,
            )
            .unwrap();
        let at = target.remote().unwrap();

        let data = within(20, "put", put(&pair.a, pair.patterned(len, 7), at))
            .await
            .unwrap_or_else(|e| panic!("{}: put: {e}", rt.name()));
        assert!(
            holds_pattern(&data, 7),
            "{}: put changed its buffer",
            rt.name()
        );
        assert!(
            holds_pattern(&target.to_vec(..).unwrap(), 7),
            "{}: the write did not land",
            rt.name()
        );

        let mut zeroed = pair.pd.alloc(len, Access::LOCAL).unwrap();
        fill(&mut zeroed, 0);
        let read = within(20, "get", get(&pair.a, zeroed, at))
            .await
            .unwrap_or_else(|e| panic!("{}: get: {e}", rt.name()));
        assert!(
            holds_pattern(&read, 7),
            "{}: the read came back wrong",
            rt.name()
        );

        let inbox = pair.pd.alloc(len, Access::LOCAL).unwrap();
        let (_, inbox, received) = within(
            20,
            "deliver",
            deliver(&pair.a, &pair.b, pair.patterned(len, 9), inbox),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: deliver: {e}", rt.name()));
        assert_eq!(
            received,
            Received {
                len,
                imm: None,
                kind: MessageKind::Send
            },
            "{}",
            rt.name()
        );
        assert!(
            holds_pattern(&inbox, 9),
            "{}: the send arrived wrong",
            rt.name()
        );

        if poll_mode != PollMode::Busy {
            // The default runtime of this build's feature waited, and could watch the channel.
            let runtime = pair.cq_a.runtime().expect("settled by the first operation");
            assert_eq!(runtime.name(), rt.adapter());
            assert!(
                pair.cq_a.wait_error().is_none(),
                "{:?}",
                pair.cq_a.wait_error()
            );
        }
    }
}

runtime_tests!(plain_library_round_trips);
