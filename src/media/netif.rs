//! This host's addresses, for ICE host candidates (str0m leaves gathering to its user) and for
//! the RTP address of a plain SIP call: which interfaces are up, which address routes to the
//! server, and which addresses are private.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One address of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddr {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// The address.
    pub ip: IpAddr,
}

/// Addresses of interfaces that are up (getifaddrs(3)), IPv4 and IPv6, loopback included.
pub fn interface_addrs() -> std::io::Result<Vec<InterfaceAddr>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs; every pointer is
    // checked for null before use and each sockaddr is read as the family it declares.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            let ip = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sa.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            out.push(InterfaceAddr { name, ip });
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// Which local addresses to offer as ICE host candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateSet {
    /// Every IPv4 address except loopback and link-local: what a browser offers.
    Lan,
    /// Only loopback (Asterisk answers checks from 127.0.0.1 although it never offers it).
    Loopback,
}

/// The host candidate addresses for `set`, IPv4 only, without duplicates.
pub fn host_ips(set: CandidateSet) -> std::io::Result<Vec<IpAddr>> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in interface_addrs()? {
        let usable = match a.ip {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(_) => false,
        };
        let wanted = match set {
            CandidateSet::Lan => !a.ip.is_loopback(),
            CandidateSet::Loopback => a.ip.is_loopback(),
        };
        if usable && wanted && !ips.contains(&a.ip) {
            ips.push(a.ip);
        }
    }
    Ok(ips)
}

/// The local address the kernel would send from to reach `server` (nothing is sent).
pub fn route_to(server: SocketAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr =
        if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(std::io::Error::other)?;
    let sock = std::net::UdpSocket::bind(any)?;
    sock.connect(server)?;
    Ok(sock.local_addr()?.ip())
}

/// Whether an address is only reachable inside some site: RFC 1918, shared address space
/// (RFC 6598, carrier-grade NAT), loopback, link-local, IPv6 unique-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_loopback() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00 || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_offered_only_when_asked() {
        let addrs = interface_addrs().unwrap();
        assert!(addrs.iter().any(|a| a.ip == IpAddr::V4(Ipv4Addr::LOCALHOST)), "{addrs:?}");
        assert_eq!(host_ips(CandidateSet::Loopback).unwrap(), vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert!(!host_ips(CandidateSet::Lan).unwrap().iter().any(|ip| ip.is_loopback()));
    }

    #[test]
    fn private_addresses() {
        for ip in ["10.1.2.3", "172.17.0.1", "192.168.1.1", "100.64.0.1", "100.127.255.1", "127.0.0.1", "fd00::1"] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.10", "198.51.100.1", "100.128.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_route_to_loopback_is_loopback() {
        assert!(route_to("127.0.0.1:9".parse().unwrap()).unwrap().is_loopback());
    }
}
