//! Memory the user already owns, registered where it is: no copy.
//!
//! Any owned byte container whose bytes stay at one address while it lives (heap storage, a
//! memory mapping) can be registered: anyrdma takes it by value, so nothing else can touch
//! or free the bytes while they are registered, and gives it back once every piece is home.

use std::any::Any;

/// Owned bytes at a stable address, which anyrdma may register without copying
/// ([`ProtectionDomain::register_owned`](crate::ProtectionDomain::register_owned)).
///
/// Implemented for `Vec<u8>`, `Box<[u8]>`, and with the `bytes` and `memmap2` features for
/// `bytes::BytesMut` and `memmap2::MmapMut` (a memory-mapped file or an anonymous mapping,
/// such as huge pages).
///
/// # Safety
/// For as long as the value lives and only [`as_mut_ptr`](StableBytes::as_mut_ptr) and
/// [`len`](StableBytes::len) are called on it, `as_mut_ptr()` must return the same pointer to
/// `len()` initialized bytes that the value owns, valid for reads and writes, which do not
/// move when the value moves (heap or mapped memory, never inline storage) and are not
/// reached by anything else; dropping the value may free them.
pub unsafe trait StableBytes: Send + 'static {
    /// The first byte.
    fn as_mut_ptr(&mut self) -> *mut u8;
    /// The length in bytes.
    fn len(&self) -> usize;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a Vec's bytes are on the heap and stay there while it is not grown, which nothing
// does while anyrdma holds it.
unsafe impl StableBytes for Vec<u8> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        Vec::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

// SAFETY: a boxed slice's bytes are on the heap and never move.
unsafe impl StableBytes for Box<[u8]> {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: a BytesMut's bytes are on the heap and move only when it grows or is split, which
// nothing does while anyrdma holds it.
#[cfg(feature = "bytes")]
unsafe impl StableBytes for bytes::BytesMut {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: a mapping stays where it was mapped until it is dropped (unmapped).
#[cfg(feature = "memmap2")]
unsafe impl StableBytes for memmap2::MmapMut {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        <[u8]>::as_mut_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// The bytes of `data`, read in place (to copy a small message out of it).
pub(crate) fn bytes_of<T: StableBytes>(data: &mut T) -> &[u8] {
    let len = data.len();
    let ptr = data.as_mut_ptr();
    if len == 0 {
        return &[];
    }
    // SAFETY: by StableBytes, `ptr` points to `len` initialized bytes owned by `data`, which
    // the returned borrow of `data` keeps alive, unmoved and unchanged.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// A registered container, kept (type-erased) until the registration is gone.
pub(crate) type OwnedContainer = Box<dyn Any + Send>;
