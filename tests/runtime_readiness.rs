//! The Runtime contract, checked on every runtime with one body each: fd readiness
//! wakes the waiting task, a pending wait can be dropped and its registration is gone,
//! timers fire and timeouts elapse.

mod support;

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::RawFd;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyrdma::ReadinessFd;
use support::Rt;

/// A non-blocking pipe, closed on drop.
struct Pipe {
    read: RawFd,
    write: RawFd,
}

impl Pipe {
    fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
        Pipe {
            read: fds[0],
            write: fds[1],
        }
    }

    fn write_byte(fd: RawFd, byte: u8) {
        // SAFETY: writes one byte from a live stack variable.
        let n = unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        assert_eq!(n, 1, "write: {}", io::Error::last_os_error());
    }

    /// One non-blocking read of a byte: what `poll_read_with` retries.
    fn read_byte(fd: RawFd) -> io::Result<u8> {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a live stack variable.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        match n {
            1 => Ok(byte),
            0 => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// `poll_read_with` of one byte.
fn read_with(watched: &dyn ReadinessFd, cx: &mut Context<'_>, fd: RawFd) -> Poll<io::Result<u8>> {
    let mut byte = 0;
    watched
        .poll_read_with(cx, &mut || {
            byte = Pipe::read_byte(fd)?;
            Ok(())
        })
        .map(|read| read.map(|()| byte))
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors came from pipe2 and are closed once, here.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// A write from another task, after the reader went to sleep, wakes the reader.
async fn readable_fd_wakes_waiting_task(rt: Rt) {
    let pipe = Pipe::new();
    // SAFETY: the pipe outlives the registration (declared first, dropped last).
    let watched = unsafe { rt.handle().register_fd(pipe.read) }.expect("register pipe");
    let write_fd = pipe.write;
    let writer = rt.spawn(async move {
        rt.handle().sleep(Duration::from_millis(30)).await;
        Pipe::write_byte(write_fd, 42);
    });
    let started = Instant::now();
    let byte = poll_fn(|cx| read_with(&*watched, cx, pipe.read))
        .await
        .expect("read after wake");
    assert_eq!(byte, 42, "{}: wrong byte", rt.name());
    assert!(
        started.elapsed() >= Duration::from_millis(25),
        "{}: read before the write",
        rt.name()
    );
    writer.await;
}

/// Bytes left after one read are seen without a new edge: the source is drained, never
/// a wake-up lost.
async fn readiness_is_edge_safe(rt: Rt) {
    let pipe = Pipe::new();
    // SAFETY: the pipe outlives the registration (declared first, dropped last).
    let watched = unsafe { rt.handle().register_fd(pipe.read) }.expect("register pipe");
    Pipe::write_byte(pipe.write, 1);
    Pipe::write_byte(pipe.write, 2);
    for expected in [1, 2] {
        let byte = rt
            .handle()
            .timeout(
                Duration::from_secs(5),
                poll_fn(|cx| read_with(&*watched, cx, pipe.read)),
            )
            .await
            .expect("second byte must not wait for a new edge")
            .expect("read");
        assert_eq!(byte, expected);
    }
    // Drained: the next wait is pending until a new write, which then wakes it.
    let mut pending_checked = false;
    let byte = poll_fn(|cx| {
        let poll = read_with(&*watched, cx, pipe.read);
        if !pending_checked {
            assert!(
                poll.is_pending(),
                "{}: empty pipe reported readable",
                rt.name()
            );
            pending_checked = true;
            Pipe::write_byte(pipe.write, 3);
        }
        poll
    })
    .await
    .expect("read third byte");
    assert_eq!(byte, 3);
}

/// Dropping a registration with a pending wait deregisters it: registering the same
/// descriptor again succeeds (the reactor would refuse a descriptor it still watches).
async fn dropped_wait_deregisters(rt: Rt) {
    let pipe = Pipe::new();
    for _ in 0..100 {
        // SAFETY: the pipe outlives the registration (declared first, dropped last).
        let watched =
            unsafe { rt.handle().register_fd(pipe.read) }.expect("register again after drop");
        let mut wait = std::pin::pin!(poll_fn(|cx| read_with(&*watched, cx, pipe.read)));
        let polled = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert!(
            polled.is_pending(),
            "{}: empty pipe reported readable",
            rt.name()
        );
        drop(watched);
    }
    // Still works after all that churn.
    // SAFETY: the pipe outlives the registration (declared first, dropped last).
    let watched = unsafe { rt.handle().register_fd(pipe.read) }.expect("register");
    Pipe::write_byte(pipe.write, 9);
    let byte = poll_fn(|cx| read_with(&*watched, cx, pipe.read))
        .await
        .expect("read");
    assert_eq!(byte, 9);
}

/// A sleep lasts at least its duration; a timeout elapses and reports the duration; a
/// timeout that does not elapse passes the output through.
async fn timers_fire_and_timeouts_elapse(rt: Rt) {
    let started = Instant::now();
    rt.handle().sleep(Duration::from_millis(20)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "{}: sleep returned early",
        rt.name()
    );

    let never = std::future::pending::<()>();
    let result = rt.handle().timeout(Duration::from_millis(20), never).await;
    assert_eq!(result, Err(anyrdma::Elapsed(Duration::from_millis(20))));

    let quick = rt
        .handle()
        .timeout(Duration::from_secs(5), async { 7 })
        .await;
    assert_eq!(quick, Ok(7));
}

runtime_tests!(
    readable_fd_wakes_waiting_task,
    readiness_is_edge_safe,
    dropped_wait_deregisters,
    timers_fire_and_timeouts_elapse,
);
