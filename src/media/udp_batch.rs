//! Batched UDP I/O for a socket that carries many calls ([`super::rtp::RtpPort`]): `recvmmsg(2)`
//! with the kernel's receive time of each datagram (`SO_TIMESTAMPNS`), and `sendmmsg(2)`. A
//! datagram's time is when the kernel queued it on the socket, so reading late (a batch per
//! wake-up, not a wake-up per datagram) does not move it.
//!
//! Owns: the system calls and their buffers; all of this module's `unsafe` is here. Must not:
//! block (the socket is non-blocking; "would block" ends a batch), or know RTP.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

/// Datagrams per system call.
const BATCH: usize = 64;
/// Room per datagram (RTP of a call is far smaller).
const MTU: usize = 2048;
/// Room for one `SCM_TIMESTAMPNS` control message (CMSG_SPACE of a timespec, rounded up).
const CONTROL: usize = 64;

/// Asks the kernel to stamp every datagram `sock` receives (`SO_TIMESTAMPNS`).
pub fn stamp_arrivals(sock: &UdpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: setsockopt reads `len` bytes from a live c_int on a socket this process owns.
    let r = unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, std::ptr::from_ref(&on).cast(), len)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// When a port that many calls share wakes next: at its next event, and while calls are up
/// (`busy`) at least `read_every` from `now` to read what arrived (its socket is outside tokio's
/// reactor: no datagram wakes it). `None`: nothing to wake for.
pub fn next_wake<T>(next_event: Option<T>, busy: bool, now: T, read_every: Duration) -> Option<T>
where
    T: Copy + Ord + std::ops::Add<Duration, Output = T>,
{
    if !busy {
        return next_event;
    }
    let read = now + read_every;
    Some(next_event.map_or(read, |at| at.min(read)))
}

/// Reads datagrams in batches; reused from one read to the next.
pub struct BatchReceiver {
    data: Vec<u8>,
    control: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    iov: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `iov` and `headers` point only into this struct's own heap
// buffers, are rewritten before every system call and used only through `&mut self`.
unsafe impl Send for BatchReceiver {}

impl Default for BatchReceiver {
    fn default() -> Self {
        BatchReceiver {
            data: vec![0; BATCH * MTU],
            control: vec![0; BATCH * CONTROL],
            // SAFETY: all-zero is a valid sockaddr_storage, iovec and mmsghdr.
            names: unsafe { zeroed_vec() },
            iov: unsafe { zeroed_vec() },
            headers: unsafe { zeroed_vec() },
        }
    }
}

impl BatchReceiver {
    /// Reads what `sock` holds, a batch at a time, until it would block; calls `each` with the
    /// source, the arrival time (the kernel's stamp, else now) and the bytes of every datagram.
    /// Returns how many were read. Errors other than "would block" (an ICMP error from an
    /// earlier send) end the read.
    pub fn drain(&mut self, sock: &UdpSocket, mut each: impl FnMut(SocketAddr, Instant, &[u8])) -> usize {
        let mut total = 0;
        loop {
            let n = self.recv(sock);
            if n == 0 {
                return total;
            }
            // The kernel's stamps are wall-clock times: place them on the monotonic clock by
            // their age now.
            let (now, wall) = (Instant::now(), SystemTime::now());
            for i in 0..n {
                let h = &self.headers[i];
                let len = (h.msg_len as usize).min(MTU);
                let Some(from) = socket_addr(&self.names[i]) else { continue };
                let at = arrival(&h.msg_hdr)
                    .and_then(|t| wall.duration_since(t).ok())
                    .and_then(|age| now.checked_sub(age))
                    .unwrap_or(now);
                each(from, at, &self.data[i * MTU..i * MTU + len]);
            }
            total += n;
            if n < BATCH {
                return total;
            }
        }
    }

    /// One `recvmmsg`; the number of datagrams read (0 when none or on error).
    fn recv(&mut self, sock: &UdpSocket) -> usize {
        for i in 0..BATCH {
            self.iov[i] = libc::iovec { iov_base: self.data[i * MTU..].as_mut_ptr().cast(), iov_len: MTU };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = std::ptr::from_mut(&mut self.names[i]).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = std::ptr::from_mut(&mut self.iov[i]);
            h.msg_iovlen = 1;
            h.msg_control = self.control[i * CONTROL..].as_mut_ptr().cast();
            h.msg_controllen = CONTROL as _;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call, with
        // the lengths given; MSG_DONTWAIT keeps it from blocking.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        usize::try_from(n).unwrap_or(0)
    }
}

/// [`BATCH`] zeroed C structs.
///
/// # Safety
/// All-zero must be a valid `T` (a C struct of integers and pointers: null pointers, zero
/// lengths, set before the kernel sees them).
unsafe fn zeroed_vec<T>() -> Vec<T> {
    // SAFETY: the caller's promise.
    (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// The `SCM_TIMESTAMPNS` time of a received message, if the kernel gave one.
fn arrival(h: &libc::msghdr) -> Option<SystemTime> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let since = Duration::new(u64::try_from(ts.tv_sec).ok()?, u32::try_from(ts.tv_nsec).ok()?);
                return SystemTime::UNIX_EPOCH.checked_add(since);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

fn socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*std::ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the address is written as the family it
    // declares, within the storage's size.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        let len = match a {
            SocketAddr::V4(v4) => {
                let sin = &mut *std::ptr::from_mut(&mut s).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *std::ptr::from_mut(&mut s).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_scope_id = v6.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (s, len as libc::socklen_t)
    }
}

/// Datagrams queued to go out together.
#[derive(Default)]
pub struct BatchSender {
    data: Vec<u8>,
    /// Each datagram's end in `data`, and its destination.
    queued: Vec<(usize, SocketAddr)>,
}

impl BatchSender {
    /// Queues `bytes` for `to`.
    pub fn push(&mut self, bytes: &[u8], to: SocketAddr) {
        self.data.extend_from_slice(bytes);
        self.queued.push((self.data.len(), to));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends everything queued from `sock`, [`BATCH`] datagrams per `sendmmsg`. A datagram the
    /// kernel refuses (an ICMP error from an earlier send, a full buffer) is skipped: loss, as
    /// for a single send.
    pub fn flush(&mut self, sock: &UdpSocket) {
        let mut start = 0;
        let mut sent = 0;
        while sent < self.queued.len() {
            let chunk = &self.queued[sent..(sent + BATCH).min(self.queued.len())];
            let mut names: Vec<(libc::sockaddr_storage, libc::socklen_t)> = Vec::with_capacity(chunk.len());
            let mut iov: Vec<libc::iovec> = Vec::with_capacity(chunk.len());
            let mut at = start;
            for (end, to) in chunk {
                names.push(sockaddr(*to));
                iov.push(libc::iovec { iov_base: self.data[at..].as_mut_ptr().cast(), iov_len: end - at });
                at = *end;
            }
            // SAFETY: all-zero is a valid mmsghdr; the pointers set below point into `names`
            // and `iov`, which outlive the call.
            let mut headers: Vec<libc::mmsghdr> = (0..chunk.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (i, h) in headers.iter_mut().enumerate() {
                h.msg_hdr.msg_name = std::ptr::from_mut(&mut names[i].0).cast();
                h.msg_hdr.msg_namelen = names[i].1;
                h.msg_hdr.msg_iov = std::ptr::from_mut(&mut iov[i]);
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `headers` describes `chunk.len()` messages in live buffers; MSG_DONTWAIT
            // keeps it from blocking.
            let n = unsafe {
                libc::sendmmsg(sock.as_raw_fd(), headers.as_mut_ptr(), chunk.len() as libc::c_uint, libc::MSG_DONTWAIT)
            };
            // The first datagram failed: skip it and go on with the next.
            let done = usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1);
            start = chunk[done - 1].0;
            sent += done;
        }
        self.data.clear();
        self.queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_wakes_for_its_next_event_or_to_read_whichever_is_first() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        assert_eq!(next_wake(Some(now + ms(1)), true, now, ms(2)), Some(now + ms(1)));
        assert_eq!(next_wake(Some(now + ms(9)), true, now, ms(2)), Some(now + ms(2)));
        assert_eq!(next_wake(None, true, now, ms(2)), Some(now + ms(2)));
        // No call up: only for an event (a call's end), or not at all.
        assert_eq!(next_wake(Some(now + ms(9)), false, now, ms(2)), Some(now + ms(9)));
        assert_eq!(next_wake(None, false, now, ms(2)), None);
    }

    #[test]
    fn a_batch_goes_out_and_comes_back_in_order_with_arrival_times() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        stamp_arrivals(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let to = rx.local_addr().unwrap();
        let before = Instant::now();
        let mut out = BatchSender::default();
        // More than one system call's worth, of different lengths.
        for i in 0..(BATCH + 10) {
            out.push(&vec![i as u8; 1 + i % 7], to);
        }
        out.flush(&tx);
        assert!(out.is_empty());
        // Read well after they arrived: their times must be the arrivals, not the read.
        std::thread::sleep(Duration::from_millis(20));
        let read = Instant::now();
        let mut got = Vec::new();
        let mut receiver = BatchReceiver::default();
        let n = receiver.drain(&rx, |from, at, bytes| got.push((from, at, bytes.to_vec())));
        assert_eq!(n, BATCH + 10);
        for (i, (from, at, bytes)) in got.iter().enumerate() {
            assert_eq!(*from, tx.local_addr().unwrap());
            assert_eq!(*bytes, vec![i as u8; 1 + i % 7]);
            // Stamped by the kernel on arrival: after the sends began (less the clocks' rounding),
            // before the read.
            assert!(*at + Duration::from_millis(1) >= before && *at < read, "datagram {i}");
        }
        assert_eq!(receiver.drain(&rx, |_, _, _| panic!("nothing more was sent")), 0);
    }
}
