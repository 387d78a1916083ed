//! A TCP stream that notes when the bytes it reads reached this host's kernel, and when
//! it was first asked to write.
//!
//! Why: at tens of thousands of answers a second the generator's one core falls behind
//! in *reading* answers, and an answer that sat in its socket buffer for 3 ms while the
//! generator was busy was not 3 ms slower from the target. The send side already takes
//! the generator's own lag out of the latency (`send_lag`); this is the receive side.
//! The kernel stamps every received segment (`SO_TIMESTAMPNS`, the software receive
//! timestamp, taken as the segment is queued on the socket); `recvmsg` hands back the
//! stamp of the last segment it read. A response is timed to the arrival of its last
//! segment, and the wait between that and the generator reading it is reported apart
//! as the read lag.
//!
//! Where the kernel gives no stamp (not Linux, the option refused, or the first
//! segments after a process first asks: the kernel turns stamping on in deferred
//! work), nothing is noted and the answer is timed when it is read, as before.
//!
//! The write side: a request handed to hyper is written by the connection's own task,
//! which a busy generator runs a while later. The first write attempt after the stamps
//! are taken is noted, so that hop is the generator's (`write_lag`), not in the
//! latency either. Noted at the attempt, before the system call: a write the target's
//! closed window held back would be the target's doing.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// When the last segment read on a connection arrived, and when the first write since
/// the last take was attempted, each until taken. Noted by the connection's own task,
/// taken by the task timing its answers; uncontended.
#[derive(Default)]
pub struct Stamps {
    arrival: Mutex<Option<Instant>>,
    written: Mutex<Option<Instant>>,
}

/// A poisoned lock holds a plain Instant: still good.
fn cell(m: &Mutex<Option<Instant>>) -> std::sync::MutexGuard<'_, Option<Instant>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stamps {
    /// The arrival noted since the last call, if any.
    pub fn arrival(&self) -> Option<Instant> {
        cell(&self.arrival).take()
    }

    /// When the first write since the last call was attempted, if any.
    pub fn written(&self) -> Option<Instant> {
        cell(&self.written).take()
    }

    fn note_arrival(&self, at: Instant) {
        *cell(&self.arrival) = Some(at);
    }

    fn note_write(&self) {
        let mut w = cell(&self.written);
        if w.is_none() {
            *w = Some(Instant::now());
        }
    }
}

/// A connected stream whose reads and writes note their times in shared [`Stamps`].
pub struct Stamped {
    inner: TcpStream,
    stamps: Arc<Stamps>,
    /// The kernel accepted `SO_TIMESTAMPNS`: reads go through `recvmsg`.
    kernel_stamps: bool,
}

impl Stamped {
    pub fn new(inner: TcpStream) -> (Stamped, Arc<Stamps>) {
        let kernel_stamps = enable(&inner);
        let stamps = Arc::new(Stamps::default());
        let s = Stamped {
            inner,
            stamps: stamps.clone(),
            kernel_stamps,
        };
        (s, stamps)
    }
}

#[cfg(target_os = "linux")]
fn enable(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn enable(_: &TcpStream) -> bool {
    false
}

/// One `recvmsg` into `buf`: the bytes read and the kernel's receive stamp of the last
/// segment among them (CLOCK_REALTIME), if it gave one.
#[cfg(target_os = "linux")]
fn recv_stamped(
    s: &TcpStream,
    buf: &mut [MaybeUninit<u8>],
) -> io::Result<(usize, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one timespec control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the header points at `iov` (over `buf`) and `control`, both alive and
    // of the lengths given, for the duration of the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: walking the control messages the kernel wrote into `control`, within
    // msg_controllen, with the libc macros made for it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                stamp = Some(
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                );
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

#[cfg(not(target_os = "linux"))]
fn recv_stamped(
    _: &TcpStream,
    _: &mut [MaybeUninit<u8>],
) -> io::Result<(usize, Option<SystemTime>)> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.kernel_stamps {
            return Pin::new(&mut me.inner).poll_read(cx, buf);
        }
        loop {
            ready!(me.inner.poll_read_ready(cx))?;
            // SAFETY: recvmsg only writes into the unfilled part (never reads it, nor
            // de-initialises it) and reports how much; exactly that much is marked
            // initialised below.
            let unfilled = unsafe { buf.unfilled_mut() };
            match me
                .inner
                .try_io(Interest::READABLE, || recv_stamped(&me.inner, unfilled))
            {
                Ok((n, stamp)) => {
                    if let Some(at) = stamp {
                        // How long ago it arrived, on the wall clock, moved onto the
                        // monotonic one (both read now; a clock step during one read
                        // is clamped to "just now").
                        let ago = SystemTime::now().duration_since(at).unwrap_or_default();
                        let now = Instant::now();
                        me.stamps.note_arrival(now.checked_sub(ago).unwrap_or(now));
                    }
                    // SAFETY: recvmsg wrote n bytes at the start of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.stamps.note_write();
        Pin::new(&mut me.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        me.stamps.note_write();
        Pin::new(&mut me.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stamped client stream over loopback, its stamps, and the server's end.
    async fn pair() -> (Stamped, Arc<Stamps>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            tokio::join!(TcpStream::connect(addr), async { listener.accept().await });
        let (s, stamps) = Stamped::new(client.unwrap());
        (s, stamps, server.unwrap().0)
    }

    /// Bytes that sat unread for 50 ms are stamped with their arrival, not their read.
    #[tokio::test]
    async fn a_read_is_stamped_with_when_its_bytes_arrived() {
        let (mut s, stamps, mut peer) = pair().await;
        let mut buf = [0u8; 16];
        // The kernel turns receive stamping on a moment after the first socket asks
        // (deferred work): the first segments of a process may come unstamped.
        for _ in 0..200 {
            peer.write_all(b"x").await.unwrap();
            s.read_exact(&mut buf[..1]).await.unwrap();
            if stamps.arrival().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sent = Instant::now();
        peer.write_all(b"hello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = s.read(&mut buf).await.unwrap();
        let read = Instant::now();
        assert_eq!(&buf[..n], b"hello");
        let at = stamps
            .arrival()
            .expect("the kernel stamps received segments");
        assert!(
            at >= sent - Duration::from_millis(1),
            "stamped before it was sent"
        );
        assert!(
            read.duration_since(at) >= Duration::from_millis(45),
            "stamped at its read, not its arrival: {:?} before the read",
            read.duration_since(at)
        );
        assert!(stamps.arrival().is_none(), "taken once");
    }

    /// A write is noted when first attempted after a take, and later writes do not move
    /// it: the request's write time is when the generator got round to writing it.
    #[tokio::test]
    async fn a_write_is_noted_at_its_first_attempt() {
        let (mut s, stamps, mut peer) = pair().await;
        assert!(stamps.written().is_none(), "nothing written yet");
        let before = Instant::now();
        s.write_all(b"GET").await.unwrap();
        let first = Instant::now();
        tokio::time::sleep(Duration::from_millis(30)).await;
        s.write_all(b" /").await.unwrap();
        let at = stamps.written().expect("the write was noted");
        assert!(
            before <= at && at <= first,
            "noted at the first write, not the second ({:?} after it)",
            at.saturating_duration_since(first)
        );
        assert!(stamps.written().is_none(), "taken once");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let again = Instant::now();
        s.write_all(b"\r\n").await.unwrap();
        let at = stamps
            .written()
            .expect("a write after the take is noted anew");
        assert!(at >= again, "the new note is the new write's");
        let mut got = [0u8; 7];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /\r\n");
    }
}
