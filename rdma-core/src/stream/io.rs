//! The I/O traits of the stream types, written once for each direction: `futures_io`'s
//! always, Tokio's with the `tokio-io` feature. [`RdmaStream`](super::RdmaStream) and its
//! halves get the same impls from the same macro, so the stream does exactly what its
//! halves do (and gains every method a half gains, `poll_write_vectored` say).
//!
//! A macro rather than a generic impl: an impl of a foreign trait for every type that
//! reaches a half would break the orphan rule.

/// `futures_io::{AsyncRead, AsyncBufRead}` and, with `tokio-io`, Tokio's, for `$ty`, whose
/// [`ReadHalf`](super::ReadHalf) is `$half` (an expression of `$this: &mut $ty`).
macro_rules! impl_read {
    ($ty:ty, |$this:ident| $half:expr) => {
        impl futures_io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let $this = self.get_mut();
                ($half).poll_read_into(cx, buf)
            }
        }

        impl futures_io::AsyncBufRead for $ty {
            $crate::stream::io::buf_read_methods!(|$this| $half);
        }

        #[cfg(feature = "tokio-io")]
        impl tokio::io::AsyncRead for $ty {
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let $this = self.get_mut();
                ($half).poll_read_buf(cx, buf)
            }
        }

        #[cfg(feature = "tokio-io")]
        impl tokio::io::AsyncBufRead for $ty {
            $crate::stream::io::buf_read_methods!(|$this| $half);
        }
    };
}

/// The methods of `AsyncBufRead`, the same in `futures_io` and Tokio.
macro_rules! buf_read_methods {
    (|$this:ident| $half:expr) => {
        fn poll_fill_buf(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<&[u8]>> {
            let $this = self.get_mut();
            ($half).poll_fill(cx)
        }

        fn consume(self: std::pin::Pin<&mut Self>, amt: usize) {
            let $this = self.get_mut();
            ($half).consume(amt);
        }
    };
}

/// `futures_io::AsyncWrite` and, with `tokio-io`, Tokio's, for `$ty`, whose
/// [`WriteHalf`](super::WriteHalf) is `$half` (an expression of `$this: &$ty`). Vectored
/// writes gather their slices into one message (Tokio's `is_write_vectored` says so, and
/// h2, hyper and tonic then hand a frame's header and payload over in one call).
macro_rules! impl_write {
    ($ty:ty, |$this:ident| $half:expr) => {
        impl futures_io::AsyncWrite for $ty {
            $crate::stream::io::write_methods!(|$this| $half, poll_close);
        }

        #[cfg(feature = "tokio-io")]
        impl tokio::io::AsyncWrite for $ty {
            $crate::stream::io::write_methods!(|$this| $half, poll_shutdown);

            fn is_write_vectored(&self) -> bool {
                true
            }
        }
    };
}

/// The methods of `AsyncWrite`, the same in `futures_io` and Tokio but for the name of the
/// half-close (`$close`).
macro_rules! write_methods {
    (|$this:ident| $half:expr, $close:ident) => {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let $this = &*self;
            ($half).poll_write_slices(cx, &[std::io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let $this = &*self;
            ($half).poll_write_slices(cx, bufs)
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let $this = &*self;
            ($half).poll_flush_bytes(cx)
        }

        fn $close(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let $this = &*self;
            ($half).poll_close_bytes(cx)
        }
    };
}

pub(super) use {buf_read_methods, impl_read, impl_write, write_methods};
