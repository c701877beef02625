//! Floods, bans (kept across an edge restart too), password guessers, forged in-dialog requests,
//! the edge's key, transports a user is refused over (proofs 5, 6 and 11 in `cluster`'s doc).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use astrtc::media::probe;
use astrtc::media::session::SharedMedia;

use crate::clients::artifacts;
use crate::common::sip::SipConnection;
use crate::common::*;

use super::{
    assert_echoed, container_of, edge_log, flood_options, local_socket, next_request, options_over_new_connection,
    peers_first, register_from, register_over, runtime, started_and_pid, wait_until, Over, Stack,
};

/// The flood request an answer is for (its Call-ID `flood-N@test`), if it is one.
fn flood_answer(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("Call-ID: flood-")).map(str::to_string)
}

/// Sends `n` OPTIONS to `to` from a fresh UDP socket, 100 a second (five times the test's flood
/// limit; a burst would also overrun the edge's socket buffer, a loss that is not the edge's
/// doing), then collects answers until none came for 2 s: how many were answered.
fn flood(to: SocketAddr, n: usize) -> usize {
    let sock = std::net::UdpSocket::bind(if to.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" }).unwrap();
    let via = format!("UDP {}", sock.local_addr().unwrap());
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 4096];
    let mut collect = |sock: &std::net::UdpSocket| {
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            answered.extend(flood_answer(&String::from_utf8_lossy(&buf[..len])));
        }
    };
    // Answers are read as they come (a socket left unread would drop them itself).
    sock.set_nonblocking(true).unwrap();
    for i in 0..n {
        sock.send_to(flood_options(&via, to, i).as_bytes(), to).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        collect(&sock);
    }
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    collect(&sock);
    answered.len()
}

/// [`flood`] over a connection: `n` OPTIONS at 100 a second, answers read as they come, then
/// until none came for 2 s (or the edge closed the connection). How many were answered, and when
/// the last answer came.
fn flood_over(conn: &mut SipConnection, to: SocketAddr, n: usize) -> (usize, Option<Instant>) {
    let via = conn.via().to_string();
    let mut answered = std::collections::BTreeSet::new();
    let mut last = None;
    let mut take = |message: &str| {
        if let Some(id) = flood_answer(message) {
            answered.insert(id);
            last = Some(Instant::now());
        }
    };
    let t0 = Instant::now();
    'sending: for i in 0..n {
        if conn.send(&flood_options(&via, to, i)).is_err() {
            break;
        }
        let tick = t0 + Duration::from_millis(10 * (i as u64 + 1));
        while let Some(left) = tick.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            match conn.next(left) {
                Ok(Some(message)) => take(&message),
                Ok(None) => break,
                Err(_) => break 'sending,
            }
        }
    }
    while let Ok(Some(message)) = conn.next(Duration::from_secs(2)) {
        take(&message);
    }
    (answered.len(), last)
}

/// A cluster whose edge takes `rate` requests a second from one address
/// (`cluster.flood_requests_per_second`) and bans for `ban_seconds`.
fn flood_stack(test: &str, rate: usize, ban_seconds: u64) -> Option<Stack> {
    let stack = Stack::start(test, |s| {
        s.replace("natping_seconds = 5\n", &format!("natping_seconds = 5\nflood_requests_per_second = {rate}\n"))
            + &format!("\n[security]\nban_seconds = {ban_seconds}\n")
    })?;
    assert_eq!(stack.cluster().flood_requests_per_second, rate as u32, "the spec edit did not take");
    assert_eq!(u64::from(stack.plan.security.ban_seconds), ban_seconds, "the spec edit did not take");
    Some(stack)
}

#[test]
fn a_udp_flood_is_dropped_not_banned_and_others_are_served() {
    use crate::common::sip::options_over_udp;
    let Some([flooder, bystander]) = peers_first(["flood", "bystand"]) else { return };
    const RATE: usize = 20;
    let Some(stack) = flood_stack("flood", RATE, 60) else { return };
    let sip = stack.plan.network.sip_port;
    const SENT: usize = 400;
    // From loopback (never banned, as the pool and security.allow): every request is served.
    let local = flood(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sip), SENT);
    eprintln!("OPTIONS flood from loopback: {local} of {SENT} answered");
    // From another address: a few seconds' worth, then nothing.
    let to = flooder.to(sip);
    let answered = flooder.run(move || flood(to, SENT));
    eprintln!("OPTIONS flood from {}: {answered} of {SENT} answered", flooder.ip);
    let log = edge_log(&stack);
    let dropped = format!("astrtc: dropping a UDP flood from {} (over {RATE} requests a second)", flooder.ip);
    assert!(log.contains(&dropped), "no flood logged for {}:\n{log}", flooder.ip);
    assert!(answered < SENT / 2, "the flood was answered: {answered} of {SENT}");
    let to = bystander.to(sip);
    assert!(
        bystander.run(move || options_over_udp(to, Duration::from_secs(2))).is_some(),
        "a bystander is not answered"
    );
    // Over UDP the source could be forged: the address is not banned (ban_seconds is 60 here),
    // only its flood was dropped; once it stops, it is answered again.
    let to = flooder.to(sip);
    let back = wait_until(Duration::from_secs(20), || {
        flooder.run(move || options_over_udp(to, Duration::from_millis(500))).is_some()
    });
    let back = back.unwrap_or_else(|| panic!("{} is still unanswered 20 s after its UDP flood: banned", flooder.ip));
    eprintln!("the flooder was answered again {back:.1?} after its flood");
    assert!(
        !edge_log(&stack).contains(&format!("astrtc: banned {}", flooder.ip)),
        "a UDP flood got its address banned"
    );
    assert!(!log.contains("astrtc: banned 127.0.0.1"), "loopback was banned:\n{log}");
    assert!(options_over_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sip), Duration::from_secs(2)).is_some());
    assert!(local >= SENT - SENT / 100, "loopback's requests were dropped: {local} of {SENT} answered");
}

#[test]
fn a_flood_over_a_connection_bans_its_address_and_spares_others() {
    use crate::common::attacker::Peer;
    use crate::common::sip::options_over_udp;
    let Some([tls_flooder, wss_flooder, bystander]) = peers_first(["tflood", "wflood", "bystand"]) else { return };
    const RATE: usize = 20;
    const BAN_SECONDS: u64 = 20;
    let Some(stack) = flood_stack("connflood", RATE, BAN_SECONDS) else { return };
    let (sip, sip_tls, wss, domain, ca) = (
        stack.plan.network.sip_port,
        stack.plan.network.sip_tls_port,
        stack.plan.network.wss_port,
        stack.plan.tls.domain.clone(),
        stack.ca_pem(),
    );
    const SENT: usize = 400;
    // Whether `peer` is answered: OPTIONS over UDP, and over a new TLS connection (a phone's).
    let answered = |peer: &Peer| {
        let (to, to_tls, d, c) = (peer.to(sip), peer.to(sip_tls), domain.clone(), ca.clone());
        peer.run(move || {
            let limit = Duration::from_secs(1);
            (options_over_udp(to, limit).is_some(), options_over_new_connection(to_tls, Over::Tls(&d, &c), limit))
        })
    };
    let banned_line = |peer: &Peer, proto: &str| {
        format!("astrtc: banned {} for {BAN_SECONDS} s: a flood over {proto} (over {RATE} requests a second)", peer.ip)
    };

    // 1. Over a WebSocket (the browsers' transport), 400 OPTIONS at 100 a second on one
    //    connection: the first are answered, then the address is banned: no answer over UDP, a
    //    new TLS connection or a new WebSocket.
    let (to, d, c) = (wss_flooder.to(wss), domain.clone(), ca.clone());
    let (wss_answered, _) = wss_flooder.run(move || {
        let mut conn = SipConnection::wss(to, &d, &c).expect("a WebSocket to the edge");
        flood_over(&mut conn, to, SENT)
    });
    eprintln!("OPTIONS flood over WSS from {}: {wss_answered} of {SENT} answered", wss_flooder.ip);
    let log = edge_log(&stack);
    assert!(log.contains(&banned_line(&wss_flooder, "wss")), "no ban logged for {}:\n{log}", wss_flooder.ip);
    assert!(wss_answered > 0, "the WebSocket carried no SIP before its flood was seen");
    assert!(wss_answered < SENT / 2, "the flood over WSS was answered: {wss_answered} of {SENT}");
    assert_eq!(answered(&wss_flooder), (false, false), "the WSS flooder is answered (UDP, new TLS connection)");
    let (to, d, c) = (wss_flooder.to(wss), domain.clone(), ca.clone());
    let again = wss_flooder.run(move || options_over_new_connection(to, Over::Wss(&d, &c), Duration::from_secs(1)));
    assert!(!again, "the WSS flooder is answered on a new WebSocket");
    // Everyone else is served.
    assert_eq!(answered(&bystander), (true, true), "a bystander is not answered (UDP, TLS)");

    // 2. The same over SIP over TLS (a phone's transport).
    let (to, d, c) = (tls_flooder.to(sip_tls), domain.clone(), ca.clone());
    let (tls_answered, last_answer) = tls_flooder.run(move || {
        let mut conn = SipConnection::tls(to, &d, &c).expect("a TLS connection to the edge");
        flood_over(&mut conn, to, SENT)
    });
    eprintln!("OPTIONS flood over TLS from {}: {tls_answered} of {SENT} answered", tls_flooder.ip);
    // The ban was set right after the last answer (the next request set it).
    let banned_at = last_answer.expect("no request of the TLS flood was answered");
    let log = edge_log(&stack);
    assert!(log.contains(&banned_line(&tls_flooder, "tls")), "no ban logged for {}:\n{log}", tls_flooder.ip);
    assert!(tls_answered < SENT / 2, "the flood over TLS was answered: {tls_answered} of {SENT}");
    assert_eq!(answered(&tls_flooder), (false, false), "the TLS flooder is answered (UDP, new TLS connection)");
    assert_eq!(answered(&bystander), (true, true), "a bystander is not answered (UDP, TLS)");
    assert!(!log.contains("astrtc: banned 127.0.0.1"), "loopback was banned:\n{log}");
    assert!(!log.contains(&format!("banned {} ", bystander.ip)), "the bystander was banned");

    // 3. The TLS flooder's ban holds for ban_seconds and then lifts: asked again and again (each
    //    time an OPTIONS over UDP and one over a new TLS connection), it is first answered no
    //    earlier than ban_seconds after the ban (less a second's margin for when the test saw the
    //    ban set: slowness only makes the figure larger).
    let mut unanswered = 0;
    let lifted = wait_until(Duration::from_secs(BAN_SECONDS + 20), || {
        let (udp, tls) = answered(&tls_flooder);
        unanswered += usize::from(!udp && !tls);
        udp || tls
    });
    let after = banned_at.elapsed();
    assert!(
        lifted.is_some(),
        "{} is still banned {after:.1?} after its flood (ban_seconds = {BAN_SECONDS})",
        tls_flooder.ip
    );
    eprintln!(
        "the TLS flooder was answered again {after:.1?} after its ban (ban_seconds = {BAN_SECONDS}; {unanswered} asks unanswered before)"
    );
    assert!(
        unanswered > 0,
        "the ban had lifted before the test asked again ({after:.1?}): the asks above took too long"
    );
    assert!(
        after >= Duration::from_secs(BAN_SECONDS - 1),
        "the ban lifted {after:.1?} after it was set, before ban_seconds = {BAN_SECONDS}"
    );
    let both = wait_until(Duration::from_secs(5), || answered(&tls_flooder) == (true, true));
    assert!(both.is_some(), "after its ban the TLS flooder is answered over one transport only");
}

/// One REGISTER for 3002 from a new UDP socket (in the calling thread's namespace) to `to`, with
/// `auth` as its Authorization header if given: the answer's text (panics on no answer in 3 s).
fn raw_register(to: SocketAddr, id: &str, auth: Option<&str>) -> String {
    try_register(to, id, auth).unwrap_or_else(|e| panic!("no answer to REGISTER {id}: {e}"))
}

/// [`raw_register`], or why nothing answered (a banned address).
fn try_register(to: SocketAddr, id: &str, auth: Option<&str>) -> Result<String, String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.connect(to).unwrap();
    let me = sock.local_addr().unwrap();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let register = format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:3002@{to}>;tag={id}\r\nTo: <sip:3002@{to}>\r\nCall-ID: {id}@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:3002@{me}>\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    sock.send(register.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).map_err(|e| format!("from {me}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_edge_bans_password_guessers_and_spares_everyone_else() {
    use crate::common::attacker::Peer;
    use crate::common::sip::{digest_authorization, options_over_udp, Registrar};
    let Some([attacker, allowed, legit, wss_guesser, scanner, framer, nobody, borrower]) =
        peers_first(["atk", "allow", "legit", "wss", "scan", "frame", "nobody", "borrow"])
    else {
        return;
    };
    if !Path::new("/usr/bin/svcrack").exists() {
        skip("/usr/bin/svcrack is not installed (Debian package sipvicious: make deps-audit)");
        return;
    }
    const BAN_AFTER: usize = 5;
    const BAN_SECONDS: u64 = 20;
    let allow = allowed.network();
    let Some(stack) = Stack::start("bans", |s| {
        format!(
            "{s}\n[security]\nban_after = {BAN_AFTER}\nfind_seconds = 60\nban_seconds = {BAN_SECONDS}\nallow = [{allow:?}]\n"
        )
    }) else {
        return;
    };
    let art = artifacts("cluster_bans");
    let (sip, domain) = (stack.plan.network.sip_port, stack.plan.tls.domain.clone());
    let options = |peer: &Peer| {
        let to = peer.to(sip);
        peer.run(move || options_over_udp(to, Duration::from_secs(2)))
    };
    let failures = |log: &str, ip: &str| {
        let (last, inner) = (format!(" from {ip}"), format!(" from {ip} "));
        log.lines().filter(|l| l.contains("astrtc: failed login") && (l.ends_with(&last) || l.contains(&inner))).count()
    };
    // Wrong passwords from `peer` (well-formed digests) until the edge stops answering, at most
    // `tries`: how many were answered, and the error that ended them ("" if none did).
    let guess = |peer: &Peer, udp: bool, user: &'static str, tries: usize| {
        let (to_sip, to_wss) = (peer.to(sip), peer.to(stack.plan.network.wss_port));
        let (domain, ca) = (domain.clone(), stack.ca_pem());
        peer.run(move || {
            let wrong = "wrong-password-xxxxxxxx";
            let mut session = if udp {
                Registrar::udp(to_sip, &domain, user, wrong).unwrap()
            } else {
                Registrar::open(to_wss, &domain, &ca, user, wrong).unwrap()
            };
            for answered in 0..tries {
                match session.register() {
                    Ok(code) => assert!(code == 401 || code == 403, "a wrong password got {code}"),
                    Err(e) => return (answered, e, Instant::now()),
                }
            }
            (tries, String::new(), Instant::now())
        })
    };

    // 1. Wrong passwords over UDP: exactly ban_after are answered and counted, then the edge
    //    answers nothing from that address.
    let (answered, error, _) = guess(&attacker, true, "3001", 100);
    let log = edge_log(&stack);
    std::fs::write(art.join("edge.log"), &log).unwrap();
    let ip = attacker.ip.to_string();
    eprintln!("UDP guesses answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "wrong passwords answered over UDP before the ban");
    assert!(log.contains(&format!("astrtc: banned {ip} for {BAN_SECONDS} s")), "no ban logged for {ip}");
    assert_eq!(failures(&log, &ip), BAN_AFTER, "failed logins counted from the attacker");
    assert_eq!(options(&attacker), None, "a banned address still gets answers");

    // 1b. A user the edge does not know (auth_check -3) counts the same: ban_after answered.
    let (answered, error, _) = guess(&nobody, true, "9999", 100);
    eprintln!("UDP guesses for an unknown user answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "guesses for an unknown user answered before the ban");
    assert_eq!(failures(&edge_log(&stack), &nobody.ip.to_string()), BAN_AFTER, "unknown-user failures counted");
    assert_eq!(options(&nobody), None, "the unknown-user guesser is still answered");

    // 1c. Another user's credentials (3001's right password, REGISTER for 3002: auth_check -8)
    //     count too. Each try asks for a nonce of its own first (nonces are bound to the address).
    let (to, password) = (borrower.to(sip), stack.password("3001"));
    let answered = borrower.run(move || {
        let uri = format!("sip:{to}");
        let mut answered = 0;
        for n in 0..BAN_AFTER * 4 {
            let Ok(text) = try_register(to, &format!("borrow{n}c"), None) else { break };
            let challenge = text.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).expect(&text).to_string();
            let auth = digest_authorization(&challenge, "REGISTER", &uri, "3001", &password).unwrap();
            let Ok(answer) = try_register(to, &format!("borrow{n}"), Some(&auth)) else { break };
            assert!(answer.starts_with("SIP/2.0 401"), "another user's credentials got: {answer}");
            answered += 1;
        }
        answered
    });
    eprintln!("REGISTERs with another user's credentials answered before the ban: {answered}");
    assert_eq!(answered, BAN_AFTER, "another user's credentials answered before the ban");
    assert_eq!(failures(&edge_log(&stack), &borrower.ip.to_string()), BAN_AFTER, "-8 failures counted");

    // 2. Everyone else is served: another address gets its OPTIONS answered and registers the
    //    account under attack, over UDP, with its password.
    assert!(options(&legit).is_some(), "the edge does not answer an address it never banned");
    let (to, d, password) = (legit.to(sip), domain.clone(), stack.password("3001"));
    let code = legit.run(move || Registrar::udp(to, &d, "3001", &password)?.register());
    assert_eq!(code, Ok(200), "the attacked account could not register from another address");

    // 3. No one can have an address banned with a nonce of their own: credentials built on a
    //    nonce the edge gave another address count as a stale nonce, never as a failure.
    let to = legit.to(sip);
    let challenge = legit.run(move || {
        let text = raw_register(to, "nonce", None);
        text.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ").map(str::to_string)).expect(&text)
    });
    let to = framer.to(sip);
    let stale = framer.run(move || {
        let uri = format!("sip:{to}");
        let auth = digest_authorization(&challenge, "REGISTER", &uri, "3002", "wrong-password-xxxxxxxx").unwrap();
        (0..BAN_AFTER + 2).map(|n| raw_register(to, &format!("frame{n}"), Some(&auth))).collect::<Vec<_>>()
    });
    assert!(stale.iter().all(|a| a.starts_with("SIP/2.0 401")), "credentials on another address's nonce: {stale:#?}");
    let marked = stale.iter().filter(|a| a.to_ascii_lowercase().contains("stale=true")).count();
    eprintln!("credentials on another address's nonce: {} answered 401, {marked} of them stale=true", stale.len());
    assert_eq!(failures(&edge_log(&stack), &framer.ip.to_string()), 0, "a borrowed nonce counted as a failed login");
    assert!(options(&framer).is_some(), "the address that used another's nonce was banned");

    // 4. svcrack over UDP: its credentials (qop without cnonce) are refused before any password
    //    is checked and could come from a forged source: never counted, never banned.
    let malformed = |log: &str| log.matches("Credentials are not filled properly").count();
    let before = malformed(&edge_log(&stack));
    let crack = scanner.svcrack(sip, "3001", 50);
    std::fs::write(art.join("svcrack-scanner.txt"), &crack).unwrap();
    let log = edge_log(&stack);
    assert!(malformed(&log) - before >= 50, "svcrack's 50 guesses did not all reach the edge:\n{crack}");
    assert!(!crack.contains("since we last received a response"), "svcrack over UDP was cut off:\n{crack}");
    assert_eq!(failures(&log, &scanner.ip.to_string()), 0, "svcrack's malformed UDP credentials counted");

    // 5. The allowed network guesses as much and is never banned: every guess answered.
    let (allowed_answered, _, _) = guess(&allowed, true, "3001", 30);
    let log = edge_log(&stack);
    let allowed_ip = allowed.ip.to_string();
    assert_eq!(allowed_answered, 30, "the allowed network's wrong passwords were not all answered");
    assert!(failures(&log, &allowed_ip) >= 30, "the allowed network's failures were not logged");
    assert!(!log.contains(&format!("banned {allowed_ip} ")), "the allowed network was banned");
    assert!(options(&allowed).is_some());

    // 6. Over the WebSocket the same: exactly ban_after wrong passwords answered, then none.
    let (answered, error, banned_by) = guess(&wss_guesser, false, "198", 100);
    eprintln!("WSS guesses answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "wrong passwords answered over WSS before the ban");
    // The ban was set while the edge handled the last answered guess: before `banned_by` (when
    // the next one went unanswered, 5 s later) minus that timeout.
    let banned_at = banned_by - Duration::from_secs(5);

    // 7. That ban holds until ban_seconds have passed, and then lifts.
    let still = banned_at + Duration::from_secs(BAN_SECONDS - 2);
    std::thread::sleep(still.saturating_duration_since(Instant::now()));
    assert_eq!(options(&wss_guesser), None, "the ban lifted before {BAN_SECONDS} s");
    let lifted = wait_until(Duration::from_secs(15), || options(&wss_guesser).is_some());
    let lifted = lifted.map(|_| banned_at.elapsed());
    eprintln!("the WSS guesser is answered again {lifted:?} after its ban (ban_seconds = {BAN_SECONDS})");
    assert!(lifted.is_some(), "the ban did not lift within {BAN_SECONDS} s + 15 s");
}

#[test]
fn in_dialog_requests_pass_only_for_the_edges_own_calls() {
    let Some(stack) = Stack::start("dialogs", |s| s) else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    // Where a forged request would be sent on to: a socket of the test's own.
    let target = local_socket(Duration::from_secs(3));
    let target_addr = target.local_addr().unwrap();
    let attacker = local_socket(Duration::from_secs(3));
    let me = attacker.local_addr().unwrap();
    for (n, method) in ["INVITE", "BYE", "UPDATE"].into_iter().enumerate() {
        // An in-dialog request (To tag) of no call the edge knows, routed through the edge (a
        // Route header naming it) to the target.
        let forged = format!(
            "{method} sip:victim@{target_addr} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-forged-{n};rport\r\n\
             Route: <sip:{edge};lr>\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:attacker@example.test>;tag=forged-from-{n}\r\n\
             To: <sip:victim@example.test>;tag=forged-to-{n}\r\n\
             Call-ID: forged-{n}@example.test\r\n\
             CSeq: 2 {method}\r\n\
             Contact: <sip:attacker@{me}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        attacker.send_to(forged.as_bytes(), edge).unwrap();
        // Nothing reaches the target (its read waits 3 s), then the edge's final answer is 481.
        let mut buf = [0u8; 4096];
        let relayed =
            target.recv_from(&mut buf).map(|(len, from)| (from, String::from_utf8_lossy(&buf[..len]).into_owned()));
        assert!(relayed.is_err(), "the edge sent a forged in-dialog {method} on: {relayed:?}");
        let answer = loop {
            let (len, _) = attacker.recv_from(&mut buf).expect("no final answer to a forged in-dialog request");
            let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
            if !answer.starts_with("SIP/2.0 1") {
                break answer;
            }
        };
        let status = answer.lines().next().unwrap_or_default().to_string();
        eprintln!("forged in-dialog {method}: {status}");
        assert!(status.starts_with("SIP/2.0 481"), "a forged in-dialog {method} got: {answer}");
    }
    // The edge's own calls still pass in-dialog requests: the probe's BYE reaches the pool and
    // is answered there.
    let report = runtime().block_on(probe::call(
        &stack.sip_setup("3001", &stack.plan.dialplan.echo_extension, Duration::from_secs(2)),
        &SharedMedia::new().unwrap(),
    ));
    if !report.healthy() {
        stack.save_logs("cluster_dialogs");
    }
    assert_echoed("echo call", &report, 50);
    assert_eq!(report.hangup.as_deref(), Some("BYE answered 200 OK"), "{}", report.ladder.join("\n"));
    pool_refuses_calls_without_the_edges_key(&stack, edge);

    // A party to a real call cannot have the edge send the call's requests elsewhere: an
    // in-dialog INFO with the right Call-ID, tags and route set but a request URI at the test's
    // socket, or the call's own request URI with an alias naming that socket, is refused (403)
    // and nothing reaches the socket; the same INFO to the call's real target reaches the pool.
    let echo = stack.plan.dialplan.echo_extension.clone();
    let mut call = RawDialog::call(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), &echo);
    eprintln!("raw call: target {}, route set {:?}", call.target, call.routes);
    let real = call.target.clone();
    // (The pool's contact already carries the edge's alias for it: replaced, not added to.)
    let aliased = format!("{};alias=127.0.0.1~{}~1", real.split(";alias=").next().unwrap(), target_addr.port());
    for (what, uri) in [("a request URI at another host", format!("sip:victim@{target_addr}")), ("an alias", aliased)] {
        let status = call.in_dialog("INFO", &uri);
        refused_and_not_relayed(&target, &format!("a party's in-dialog INFO with {what} ({uri})"), &status);
    }
    let status = call.in_dialog("INFO", &real);
    eprintln!("in-dialog INFO to the call's target ({real}): {status}");
    assert!(status.starts_with("SIP/2.0 200"), "the call's own INFO was not answered by the pool: {status}");
    // Nor back to the caller itself (relayed, it would reach the caller's socket, which never
    // answers: 408, not 403).
    let own = format!("sip:raw@{}", call.sock.local_addr().unwrap());
    let status = call.in_dialog("INFO", &own);
    eprintln!("in-dialog INFO from the caller to itself ({own}): {status}");
    assert!(status.starts_with("SIP/2.0 403"), "the caller's in-dialog INFO to itself got: {status}");
    // Someone who knows the call's Call-ID, tags and route set but sends from an address of
    // their own (an eavesdropper on the UDP path) cannot end it: their BYE to the call's real
    // target is refused, and the call is still up at the pool (its INFO answered 200, not 481).
    let mut eavesdropper = call.sent_elsewhere();
    let status = eavesdropper.in_dialog("BYE", &real);
    eprintln!("the call's BYE from another address ({}): {status}", eavesdropper.sock.local_addr().unwrap());
    assert!(status.starts_with("SIP/2.0 403"), "a BYE from an address not a party to the call got: {status}");
    call.cseq = eavesdropper.cseq;
    let status = call.in_dialog("INFO", &real);
    assert!(status.starts_with("SIP/2.0 200"), "the call did not outlive the eavesdropper's BYE: {status}");
    // The two parties are kept with the dialog in the database (an edge restart keeps the check).
    let vars = stack.sql("SELECT dialog_key || '=' || dialog_value FROM dialog_vars ORDER BY dialog_key");
    eprintln!("dialog_vars: {vars:?}");
    for key in ["answered=1", "callee=", "caller=127.0.0.1:"] {
        assert!(vars.lines().any(|l| l.starts_with(key)), "no {key} in dialog_vars: {vars:?}");
    }
    let status = call.in_dialog("BYE", &real);
    assert!(status.starts_with("SIP/2.0 200"), "the call's BYE: {status}");

    // The other way: the pool hangs up a call (the member's channel hung up by hand), and its
    // BYE reaches the caller through the edge — the caller is a party too.
    let other = RawDialog::call(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), &echo);
    for m in &stack.members() {
        stack.exec(&m.name, &["asterisk", "-rx", "channel request hangup all"]);
    }
    let bye = next_request(&other.sock, Duration::from_secs(5));
    eprintln!("from the pool to the caller: {:?}", bye.as_deref().and_then(|r| r.lines().next()));
    assert!(bye.as_deref().is_some_and(|r| r.starts_with("BYE ")), "the pool's BYE never reached the caller: {bye:?}");

    // A phone that keeps the edge as a preloaded Route calls a user who is not registered: the
    // edge's 480 (sent within a transaction) is taken back by the phone's ACK, Route and all, so
    // the edge does not send it again (over UDP it would, from half a second on, until an ACK).
    let mut offline = RawDialog::invite_routed(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), "3010");
    let answer = offline.final_answer();
    eprintln!("a call to a user not registered: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 480"), "a call to a user not registered got: {answer}");
    let uri = format!("sip:3010@{}", stack.plan.tls.domain);
    offline.ack_failure(&answer, &uri);
    offline.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let again = offline.sock.recv_from(&mut buf).map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(again.is_err(), "the edge sent its failure answer again after the routed ACK: {again:?}");

    // Before the callee answers (here: 3002 registered at a socket that never replies), the
    // dialog matches any To tag: a request made up with one may go only to the caller.
    let phone = local_socket(Duration::from_secs(5));
    let contact = format!("sip:3002@{}", phone.local_addr().unwrap());
    let registered = register_from(&phone, edge, "3002", &stack.password("3002"), &contact);
    assert!(registered.starts_with("SIP/2.0 200"), "3002 could not register: {registered}");
    let mut ringing = RawDialog::invite(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), "3002");
    let invite = next_request(&phone, Duration::from_secs(5));
    assert!(invite.as_deref().is_some_and(|r| r.starts_with("INVITE ")), "3002's phone got no INVITE: {invite:?}");
    ringing.to = format!("<sip:3002@{}>;tag=made-up", stack.plan.tls.domain);
    ringing.routes = vec![format!("<sip:{edge};lr>")];
    let status = ringing.in_dialog("INFO", &format!("sip:victim@{target_addr}"));
    refused_and_not_relayed(&target, "an in-dialog INFO (a made-up To tag) before the answer", &status);

    // A browser's WebSocket closes mid-call (an edge restart closes them all) and it comes back
    // from another port of the same address: its BYE is taken (over a connection, whose address
    // cannot be forged, the sender's address is enough).
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let (domain, ca) = (stack.plan.tls.domain.clone(), stack.ca_pem());
    let open = || SipConnection::wss(wss, &domain, &ca).expect("a WebSocket to the edge");
    let mut browser = RawDialog::call_over(Some(open()), edge, &domain, "199", &stack.password("199"), &echo);
    browser.conn = Some(open());
    let target_of_call = browser.target.clone();
    let status = browser.in_dialog("BYE", &target_of_call);
    eprintln!("the call's BYE over a new WebSocket from the same address: {status}");
    assert!(status.starts_with("SIP/2.0 200"), "a BYE over the caller's new WebSocket got: {status}");

    let log = edge_log(&stack);
    let refused = |what: &str, why: &str| log.lines().filter(|l| l.contains(what) && l.contains(why)).count();
    let (info, bye) = ("astrtc: refused an in-dialog INFO", "astrtc: refused an in-dialog BYE");
    assert_eq!(refused(info, ": not the other party to call"), 4, "the edge did not log every misdirected INFO");
    assert_eq!(refused(bye, ": not a party to call"), 1, "the edge did not log the eavesdropper's BYE");
}

/// The pool trusts the edge by its key, not by its address alone: any process on the host sends
/// from the edge's address on the pool's network (the bridge's gateway, the edge endpoint's
/// `match`). From there, straight to a pool member, an INVITE of the echo extension with an offer
/// is refused 403 (the dialplan's `Hangup(21)`) and logged by the member, with a made-up key as
/// without one; with the right key the same INVITE is answered 200 (so the refusal is the key's,
/// not the address's). A client that writes its own `X-Astrtc-Edge` into a call through the edge
/// (a wrong key) is answered 200 — the edge removed it and sent its own — and nothing of the key
/// comes back.
fn pool_refuses_calls_without_the_edges_key(stack: &Stack, edge: SocketAddr) {
    let cluster = stack.cluster();
    let (domain, echo) = (&stack.plan.tls.domain, &stack.plan.dialplan.echo_extension);
    let member = &stack.members()[0];
    let to = SocketAddr::new(IpAddr::V4(member.address), stack.plan.network.sip_port);
    let from_host = || {
        let sock = std::net::UdpSocket::bind((cluster.edge_address, 0)).expect("a socket at the host's pool address");
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock
    };
    let forged = "X-Astrtc-Edge: forgedForgedForgedForged0123456789\r\n";
    for (what, headers) in [("without a key", ""), ("with a made-up key", forged)] {
        let (d, answer) = RawDialog::invite_direct(from_host(), to, domain, echo, headers);
        let status = answer.lines().next().unwrap_or_default().to_string();
        eprintln!("a direct INVITE {what} from {} to {} at {to}: {status}", d.sock.local_addr().unwrap(), member.name);
        assert!(
            status.starts_with("SIP/2.0 403"),
            "a direct INVITE {what} from the host's pool address (the edge's match) to {} was not refused 403 \
             (the pool took the edge's address alone for the edge): {answer}",
            member.name
        );
    }
    let right = format!("X-Astrtc-Edge: {}\r\n", cluster.edge_key.expose());
    let (_, answer) = RawDialog::invite_direct(from_host(), to, domain, echo, &right);
    eprintln!("a direct INVITE with the edge's key: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 200"), "a direct INVITE with the edge's key was not answered: {answer}");
    let log = {
        let out = Command::new("docker").args(["logs", &member.id]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let refusals = log
        .lines()
        .filter(|l| l.contains(&format!("astrtc: refused a call to {echo} from {}:", cluster.edge_address)))
        .count();
    assert_eq!(refusals, 2, "{} did not log each refusal (\"astrtc: refused a call to {echo} from …\")", member.name);

    let (mut call, answer) = RawDialog::call_carrying(edge, domain, "3001", &stack.password("3001"), echo, forged);
    eprintln!("a call through the edge carrying a made-up key: {}", answer.lines().next().unwrap_or_default());
    assert!(
        !answer.to_ascii_lowercase().contains("x-astrtc-edge"),
        "the edge relayed the header to the caller: {answer}"
    );
    assert!(!answer.contains(cluster.edge_key.expose()), "the edge's key reached the caller: {answer}");
    let target = call.target.clone();
    let status = call.in_dialog("BYE", &target);
    assert!(status.starts_with("SIP/2.0 200"), "the call's BYE: {status}");
}

/// A reply to `request` (`status`, e.g. `200 OK`) as a UDP phone sends it: the request's Via and
/// Record-Route headers, From, To with `tag`, Call-ID and CSeq, then `extra` headers and `sdp`.
fn reply_to(request: &str, status: &str, tag: &str, contact: &str, extra: &str, sdp: &str) -> String {
    let copied: String = request
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default().trim().to_ascii_lowercase();
            ["via", "v", "record-route", "from", "f", "call-id", "i", "cseq"].contains(&name.as_str())
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    let to = header_of(request, "To").expect("a To header");
    let body = if sdp.is_empty() { String::new() } else { "Content-Type: application/sdp\r\n".to_string() };
    format!(
        "SIP/2.0 {status}\r\n{copied}To: {to};tag={tag}\r\nContact: <{contact}>\r\n{extra}{body}Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// The edge's key never reaches a user, and a header of that name from one never reaches
/// another: 3001 calls 3002 (a UDP socket of the test's, registered through the edge), user to
/// user; the INVITE 3002 receives carries no `X-Astrtc-Edge` and not the key, and its 200 OK —
/// sent with `X-Astrtc-Edge: <made-up>` — reaches 3001 without it (the edge's `reply_route`
/// strips it from every reply); the call ends with its BYE answered. A call to 3002 from a pool
/// member's own address is refused 403 (the pool starts nothing) and never reaches 3002.
#[test]
fn a_users_reply_loses_its_copy_of_the_edges_header_and_no_user_gets_the_key() {
    let Some(stack) = Stack::start("replyhdr", |s| s) else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let key = stack.cluster().edge_key.expose().to_string();
    let callee = local_socket(Duration::from_secs(10));
    let callee_copy = callee.try_clone().unwrap();
    let contact = format!("sip:3002@{}", callee.local_addr().unwrap());
    let registered = register_from(&callee, edge, "3002", &stack.password("3002"), &contact);
    assert!(registered.starts_with("SIP/2.0 200"), "3002 did not register: {registered}");
    let made_up = "upstreamCopyOfTheEdgesHeader0123456789";
    let phone = std::thread::spawn(move || {
        let invite = next_request(&callee, Duration::from_secs(15)).expect("3002 was never called");
        assert!(invite.starts_with("INVITE "), "3002 got {invite}");
        let port = callee.local_addr().unwrap().port();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            port + 2
        );
        let extra = format!("X-Astrtc-Edge: {made_up}\r\n");
        let ok = reply_to(&invite, "200 OK", "callee", &contact, &extra, &sdp);
        let from = header_of(&invite, "Via").and_then(|v| v.split_whitespace().nth(1)).expect("a Via").to_string();
        let to: SocketAddr = from.split(';').next().unwrap().parse().expect("the edge's Via address");
        callee.send_to(ok.as_bytes(), to).unwrap();
        // The ACK, then the BYE, answered.
        let mut bye = None;
        while let Some(request) = next_request(&callee, Duration::from_secs(15)) {
            if request.starts_with("BYE ") {
                callee.send_to(reply_to(&request, "200 OK", "callee", &contact, "", "").as_bytes(), to).unwrap();
                bye = Some(request);
                break;
            }
        }
        (invite, bye.is_some())
    });
    let (mut call, answer) =
        RawDialog::call_carrying(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), "3002", "");
    eprintln!("3001's answer from 3002 through the edge:\n{answer}");
    assert!(!answer.contains(made_up), "a user's X-Astrtc-Edge reached the other user: {answer}");
    assert!(!answer.to_ascii_lowercase().contains("x-astrtc-edge"), "the reply kept an X-Astrtc-Edge: {answer}");
    let target = call.target.clone();
    let status = call.in_dialog("BYE", &target);
    assert!(status.starts_with("SIP/2.0 200"), "the call's BYE: {status}");
    let (invite, bye_reached) = phone.join().unwrap();
    assert!(!invite.to_ascii_lowercase().contains("x-astrtc-edge"), "the edge sent a user its header: {invite}");
    assert!(!invite.contains(&key), "the edge sent a user its key: {invite}");
    assert!(bye_reached, "3001's BYE never reached 3002");

    // The pool starts nothing: a call to 3002 sent from a pool member's own address and SIP port
    // (written whole, from a raw socket in the member's network namespace — its Asterisk holds
    // the port — as a member, or whoever can send from its address, would) is refused and
    // logged, and nothing reaches 3002. (The edge's 403 goes to the member's Asterisk, which
    // drops it: no transaction of its own.)
    let member = stack.members()[0].clone();
    let pid = {
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &container_of(&stack, &member.name)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let sip_port = stack.plan.network.sip_port;
    let edge_on_pool = std::net::SocketAddrV4::new(stack.cluster().edge_address, sip_port);
    let from = std::net::SocketAddrV4::new(member.address, sip_port);
    let domain = &stack.plan.tls.domain;
    let invite = format!(
        "INVITE sip:3002@{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-forged-{pid};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:600@{domain}>;tag=forged\r\nTo: <sip:3002@{domain}>\r\n\
         Call-ID: forged-from-the-pool-{pid}\r\nCSeq: 1 INVITE\r\nContact: <sip:600@{from}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
        FORGED_SDP.len(),
        FORGED_SDP
    );
    let name = member.name.clone();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the member's network namespace");
        // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {name}'s namespace: {}", std::io::Error::last_os_error());
        send_udp_from(from, edge_on_pool, invite.as_bytes());
    })
    .join()
    .unwrap();
    let reached = next_request(&callee_copy, Duration::from_secs(3));
    eprintln!("a call to 3002 from {from} ({}'s address and port): reached 3002: {reached:?}", member.name);
    assert!(reached.is_none(), "a call from a pool member's address reached 3002 (no login asked): {reached:?}");
    let logged = wait_until(Duration::from_secs(5), || {
        let out = stack.project.run(&["logs", "--no-color", "edge"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("refused a INVITE from the pool's address {}", from.ip()))
    });
    assert!(logged.is_some(), "the edge did not log refusing the INVITE from {from}");
}

/// The offer of the call [`a_users_reply_loses_its_copy_of_the_edges_header_and_no_user_gets_the_key`]
/// forges from a pool member's address.
const FORGED_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                          m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

/// Sends `payload` in one UDP datagram from `from` to `to`, the IPv4 and UDP headers written
/// here (a raw socket; the kernel fills the IP checksum, the UDP checksum is left 0, which IPv4
/// allows): a source address and port no socket of this process holds.
fn send_udp_from(from: std::net::SocketAddrV4, to: std::net::SocketAddrV4, payload: &[u8]) {
    let total = 20 + 8 + payload.len();
    let mut packet = Vec::with_capacity(total);
    packet.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    // SAFETY: a raw socket used for one sendto of a buffer that outlives the call, then closed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "a raw socket: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.ip().octets()) },
            sin_zero: [0; 8],
        };
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(sent, packet.len() as isize, "sending the datagram: {err}");
    }
}

/// The status line a pool member's answer to a direct INVITE of the echo extension gets, sent
/// from the host's pool address (the edge's match) carrying `key` in `X-Astrtc-Edge`.
fn direct_invite_with_key(stack: &Stack, key: &str) -> String {
    let cluster = stack.cluster();
    let to = SocketAddr::new(IpAddr::V4(stack.members()[0].address), stack.plan.network.sip_port);
    let sock = std::net::UdpSocket::bind((cluster.edge_address, 0)).expect("a socket at the host's pool address");
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let headers = format!("X-Astrtc-Edge: {key}\r\n");
    let (_, answer) =
        RawDialog::invite_direct(sock, to, &stack.plan.tls.domain, &stack.plan.dialplan.echo_extension, &headers);
    answer.lines().next().unwrap_or_default().to_string()
}

/// A rotation of the edge's key, as the README gives it: `astrtc secrets --rotate edge-key` and
/// `astrtc apply --yes` reload the pool in place (same start and PID: no pool member restarts)
/// and restart the edge with the new key, while a call held through the edge across it keeps its
/// audio; a member then takes the new key and the previous one (its calls logged) and refuses a
/// made-up one; a new call through the restarted edge is echoed. `--finish-rotation edge-key`
/// and `apply --yes` again restart nothing, and the previous key is refused 403 from then on. A
/// rotation finished before it was applied is refused by `apply` (exit 2, nothing written or
/// restarted) while the edge runs, and the remedy its help names applies. An edge recreated with
/// a new key before the pool has reloaded still has its calls taken (it sends the previous key
/// too, during a rotation).
#[test]
fn the_edges_key_rotates_without_restarting_the_pool_or_dropping_a_call() {
    let Some(stack) = Stack::start("rotate", |s| s) else { return };
    let spec = stack.dir.path().join("astrtc.toml");
    let secrets = stack.dir.path().join("astrtc.secrets.toml");
    let old_key = stack.cluster().edge_key.expose().to_string();
    let members: Vec<String> = stack.members().iter().map(|m| m.name.clone()).collect();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let starts = |services: &[String]| -> Vec<String> {
        services.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect()
    };
    let pool_before = starts(&members);
    let edge_before = starts(&["edge".to_string()]);
    let step = |flag: &str| {
        let out = astrtc().args(["secrets", "--spec"]).arg(&spec).args([flag, "edge-key"]).output().unwrap();
        assert!(out.status.success(), "secrets {flag}: {}", String::from_utf8_lossy(&out.stderr));
        let out = astrtc().args(["apply", "--yes", "--spec"]).arg(&spec).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("astrtc apply --yes after secrets {flag}:\n{stdout}");
        if !out.status.success() {
            stack.save_logs("cluster_rotate");
        }
        assert!(out.status.success(), "apply after {flag}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };

    // A call held through the edge across the rotation (12 s; the rotation's apply takes less).
    let held = {
        let setup = stack.sip_setup("3001", &echo, Duration::from_secs(12));
        std::thread::spawn(move || runtime().block_on(probe::call(&setup, &SharedMedia::new().unwrap())))
    };
    let up = wait_until(Duration::from_secs(10), || members.iter().map(|m| stack.active(m)).sum::<u64>() >= 1);
    assert!(up.is_some(), "the held call never reached the pool");

    let applied = step("--rotate");
    // The call was still up when the edge had restarted and the pool reloaded: it spans both.
    assert!(!held.is_finished(), "the held call ended before the rotation's apply did (hold longer)");
    // The edge's key the secrets file holds now.
    let key_now = || -> String {
        let parsed: astrtc::spec::secrets::Secrets =
            toml::from_str(&std::fs::read_to_string(&secrets).unwrap()).unwrap();
        parsed.cluster.unwrap().edge_key.unwrap()
    };
    let new_key = key_now();
    assert_ne!(new_key, old_key);
    assert!(!applied.contains(&new_key) && !applied.contains(&old_key), "apply printed a key");
    assert!(applied.contains("reloaded in place"), "the pool was not reloaded: {applied}");
    assert_eq!(starts(&members), pool_before, "a pool member restarted for the key's rotation");
    assert_ne!(starts(&["edge".to_string()]), edge_before, "the edge did not restart with the new key");

    let report = held.join().unwrap();
    if !report.healthy() {
        stack.save_logs("cluster_rotate");
    }
    assert_echoed("the call held across the rotation", &report, 500);

    // A rotation under way: both keys taken, a made-up one refused.
    for (what, key, want) in [
        ("the new key", new_key.as_str(), "SIP/2.0 200"),
        ("the previous key", old_key.as_str(), "SIP/2.0 200"),
        ("a made-up key", "madeUpMadeUpMadeUp0123456789abcdef", "SIP/2.0 403"),
    ] {
        let status = direct_invite_with_key(&stack, key);
        eprintln!("rotation under way: a direct INVITE with {what}: {status}");
        assert!(status.starts_with(want), "rotation under way: a direct INVITE with {what} was answered {status}");
    }
    let log = {
        let out = Command::new("docker").args(["logs", &container_of(&stack, &members[0])]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(log.contains("came with the edge's previous key"), "{} did not log the previous key's call", members[0]);
    let report = runtime()
        .block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(1)), &SharedMedia::new().unwrap()));
    assert_echoed("a call through the edge with the new key", &report, 25);

    // Finished: nothing restarts, the previous key is refused, the new one taken.
    let all: Vec<String> = ["edge", "relay", "db"].iter().map(|s| s.to_string()).chain(members.clone()).collect();
    let before_finish = starts(&all);
    let applied = step("--finish-rotation");
    assert_eq!(starts(&all), before_finish, "finishing the rotation restarted a service: {applied}");
    for (what, key, want) in
        [("the previous key", old_key.as_str(), "SIP/2.0 403"), ("the new key", new_key.as_str(), "SIP/2.0 200")]
    {
        let status = direct_invite_with_key(&stack, key);
        eprintln!("rotation finished: a direct INVITE with {what}: {status}");
        assert!(status.starts_with(want), "rotation finished: a direct INVITE with {what} was answered {status}");
    }

    // A rotation finished before it was applied: the pool, reloaded first, would refuse the
    // running edge's key until the edge restarted. apply refuses it while the edge runs, writing
    // nothing and touching no service; the remedy its help gives (the running key as the
    // previous one) then applies. Between the two steps an apply that was not confirmed (no
    // --yes, no terminal) wrote the rotation's files and restarted nothing: the rendered
    // edge_key.cfg then names the new key, not the running edge's (its label does).
    let secrets_step = |flag: &str| {
        let out = astrtc().args(["secrets", "--spec"]).arg(&spec).args([flag, "edge-key"]).output().unwrap();
        assert!(out.status.success(), "secrets {flag}: {}", String::from_utf8_lossy(&out.stderr));
    };
    secrets_step("--rotate");
    let edge_running = starts(&["edge".to_string()]);
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).write_stdin("").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an apply without --yes: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(starts(&["edge".to_string()]), edge_running, "an apply not confirmed restarted the edge");
    secrets_step("--finish-rotation");
    let newest = key_now();
    assert_ne!(newest, new_key);
    let deploy = stack.dir.path().join("deploy");
    let rendered = |file: &str| std::fs::read(deploy.join(file)).unwrap();
    let files = ["edge/edge_key.cfg", "asterisk/extensions_edge.conf", "compose.yaml"];
    let files_before: Vec<Vec<u8>> = files.iter().map(|f| rendered(f)).collect();
    let before_refusal = starts(&all);
    let out = astrtc().args(["apply", "--yes", "--spec"]).arg(&spec).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("apply after a rotation finished unapplied: {:?}\n{stderr}", out.status.code());
    assert_eq!(out.status.code(), Some(2), "apply took a key the running edge's calls would be refused for: {stderr}");
    assert!(stderr.contains("no rotation under way"), "the refusal does not say why: {stderr}");
    assert!(!stderr.contains(&newest) && !stderr.contains(&new_key), "the refusal printed a key");
    let files_after: Vec<Vec<u8>> = files.iter().map(|f| rendered(f)).collect();
    assert!(files_after == files_before, "the refused apply wrote into {}", deploy.display());
    assert_eq!(starts(&all), before_refusal, "the refused apply restarted a service");
    let status = direct_invite_with_key(&stack, &new_key);
    assert!(status.starts_with("SIP/2.0 200"), "after the refusal the running key was answered {status}");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(
        &secrets,
        text.replacen("edge_key = ", &format!("edge_key_previous = \"{new_key}\"\nedge_key = "), 1),
    )
    .unwrap();
    let applied = {
        let out = astrtc().args(["apply", "--yes", "--spec"]).arg(&spec).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "apply with the help's remedy: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    assert!(applied.contains("reloaded in place"), "the remedy's apply did not reload the pool: {applied}");
    for (what, key) in
        [("the running edge's key, now the previous", new_key.as_str()), ("the newest key", newest.as_str())]
    {
        let status = direct_invite_with_key(&stack, key);
        eprintln!("the remedy applied: a direct INVITE with {what}: {status}");
        assert!(status.starts_with("SIP/2.0 200"), "the remedy applied: a direct INVITE with {what}: {status}");
    }

    // The edge restarted with a new key before the pool has reloaded (what `helm upgrade` may do:
    // nothing orders the two there): during a rotation the edge sends its previous key in a
    // second header, which a member that has not reloaded knows. Rendered, and only the edge
    // recreated, by hand; the pool still holds the last apply's keys.
    secrets_step("--finish-rotation");
    secrets_step("--rotate");
    let fourth = key_now();
    let out = astrtc().args(["render", "--spec"]).arg(&spec).output().unwrap();
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    let pool_unreloaded = starts(&members);
    let edge_before = starts(&["edge".to_string()]);
    let out = stack.project.run(&["up", "-d", "--wait", "edge"]);
    assert!(out.status.success(), "recreating the edge: {}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(starts(&["edge".to_string()]), edge_before, "the edge was not recreated with the new key");
    assert_eq!(starts(&members), pool_unreloaded, "a pool member restarted");
    let status = direct_invite_with_key(&stack, &fourth);
    eprintln!("a member that has not reloaded: a direct INVITE with the edge's new key: {status}");
    assert!(
        status.starts_with("SIP/2.0 403"),
        "a member took the edge's new key before reloading (so this proves nothing): {status}"
    );
    let report = runtime()
        .block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(1)), &SharedMedia::new().unwrap()));
    if !report.healthy() {
        stack.save_logs("cluster_rotate");
    }
    assert_echoed("a call through an edge with the new key to a pool that has not reloaded", &report, 25);
}

/// A party's in-dialog request (`what`) was answered `status`: it must be 403 with nothing
/// reaching `target` (whose read waits its timeout).
fn refused_and_not_relayed(target: &std::net::UdpSocket, what: &str, status: &str) {
    eprintln!("{what}: {status}");
    let mut buf = [0u8; 4096];
    let relayed =
        target.recv_from(&mut buf).map(|(len, from)| (from, String::from_utf8_lossy(&buf[..len]).into_owned()));
    assert!(relayed.is_err(), "the edge sent {what} on: {relayed:?}");
    assert!(status.starts_with("SIP/2.0 403"), "{what} got: {status}");
}

/// A call placed by hand over UDP through the edge (no media): what its in-dialog requests need.
struct RawDialog {
    sock: std::net::UdpSocket,
    /// A connection (WSS) the dialog's requests go over instead of `sock`.
    conn: Option<SipConnection>,
    edge: SocketAddr,
    call_id: String,
    from: String,
    to: String,
    /// The route set: the answer's Record-Route, reversed.
    routes: Vec<String>,
    /// The answer's Contact URI.
    target: String,
    cseq: u32,
    /// Header lines every request of this dialog carries besides its own (each ending CRLF).
    headers: String,
}

impl RawDialog {
    /// INVITEs `extension` through the edge as `user` (answering the challenge), then ACKs
    /// the 200 OK.
    fn call(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::call_over(None, edge, domain, user, password, extension)
    }

    /// [`RawDialog::call`] over `conn` when given (a WebSocket), else UDP.
    fn call_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
    ) -> RawDialog {
        let mut d = RawDialog::invite_over(conn, edge, domain, user, password, extension);
        let answer = d.final_answer();
        assert!(answer.starts_with("SIP/2.0 200"), "the call was not answered: {answer}");
        d.answered(&answer);
        d
    }

    /// [`RawDialog::call`] with `headers` in every request: the dialog and the INVITE's 200 OK.
    fn call_carrying(
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
        headers: &str,
    ) -> (RawDialog, String) {
        let mut d =
            RawDialog::start_over(None, edge, domain, user, password, extension, |d| d.headers = headers.into());
        let answer = d.final_answer();
        assert!(answer.starts_with("SIP/2.0 200"), "the call carrying {headers:?} was not answered: {answer}");
        d.answered(&answer);
        (d, answer)
    }

    /// Takes the dialog's tag, target and route set from its 200 OK, and ACKs it.
    fn answered(&mut self, answer: &str) {
        let d = self;
        d.to = header_of(answer, "To").unwrap().to_string();
        d.target = header_of(answer, "Contact").unwrap().trim_start_matches('<').split('>').next().unwrap().into();
        let mut routes: Vec<String> = answer
            .lines()
            .filter_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("Record-Route")))
            .flat_map(|(_, v)| v.split(',').map(|r| r.trim().to_string()).collect::<Vec<_>>())
            .collect();
        routes.reverse();
        d.routes = routes;
        let target = d.target.clone();
        let ack = d.request("ACK", &target, "", "");
        d.transmit(&ack);
    }

    /// Sends the INVITE, answers the edge's challenge and sends it again with credentials; does
    /// not wait for the call's answer.
    fn invite(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::invite_over(None, edge, domain, user, password, extension)
    }

    /// [`RawDialog::invite`] from a phone that keeps the edge as a preloaded Route (baresip with
    /// an outbound proxy): every request it sends, ACKs to failures included, carries it.
    fn invite_routed(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::start_over(None, edge, domain, user, password, extension, |d| {
            d.routes = vec![format!("<sip:{edge};lr>")]
        })
    }

    fn invite_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
    ) -> RawDialog {
        RawDialog::start_over(conn, edge, domain, user, password, extension, |_| {})
    }

    fn start_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
        setup: impl FnOnce(&mut RawDialog),
    ) -> RawDialog {
        use crate::common::sip::digest_authorization;
        let (mut d, uri, sdp) =
            RawDialog::unsent(local_socket(Duration::from_secs(10)), conn, edge, domain, user, extension);
        setup(&mut d);
        let ctype = "Content-Type: application/sdp\r\n";
        let invite = d.request("INVITE", &uri, ctype, &sdp);
        let answer = d.send(&invite);
        let (name, reply) = if answer.starts_with("SIP/2.0 401") {
            ("WWW-Authenticate", "Authorization")
        } else {
            assert!(answer.starts_with("SIP/2.0 407"), "the INVITE was not challenged: {answer}");
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        d.ack_failure(&answer, &uri);
        let challenge = header_of(&answer, name).expect("a challenge");
        let auth = format!("{reply}: {}\r\n", digest_authorization(challenge, "INVITE", &uri, user, password).unwrap());
        d.cseq += 1;
        let invite = d.request("INVITE", &uri, &format!("{auth}{ctype}"), &sdp);
        d.transmit(&invite);
        d
    }

    /// An INVITE of `extension` with an offer (G.711), sent without credentials from `sock`
    /// straight to `to` carrying `headers`: the dialog and the INVITE's final answer (a failure
    /// ACKed, a 200 OK ACKed and its call ended with a BYE).
    fn invite_direct(
        sock: std::net::UdpSocket,
        to: SocketAddr,
        domain: &str,
        extension: &str,
        headers: &str,
    ) -> (RawDialog, String) {
        let (mut d, uri, sdp) = RawDialog::unsent(sock, None, to, domain, "attacker", extension);
        d.headers = headers.to_string();
        // A CSeq of its own, so a branch of its own (the Via branch is made of the Call-ID's
        // length and the CSeq): pjsip matches a transaction by branch alone, and took a second
        // call's INVITE for the first's.
        d.cseq = u32::from(d.sock.local_addr().unwrap().port());
        let invite = d.request("INVITE", &uri, "Content-Type: application/sdp\r\n", &sdp);
        let answer = d.send(&invite);
        if answer.starts_with("SIP/2.0 200") {
            d.answered(&answer);
            let target = d.target.clone();
            let bye = d.in_dialog("BYE", &target);
            eprintln!("the direct call's BYE: {bye}");
        } else {
            d.ack_failure(&answer, &uri);
        }
        (d, answer)
    }

    /// A dialog whose first INVITE (to `extension`) is not sent yet: the dialog, the request URI
    /// and the INVITE's offer.
    fn unsent(
        sock: std::net::UdpSocket,
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        extension: &str,
    ) -> (RawDialog, String, String) {
        let me = sock.local_addr().unwrap();
        let uri = format!("sip:{extension}@{domain}");
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            me.port() + 2
        );
        let d = RawDialog {
            sock,
            conn,
            edge,
            call_id: format!("raw-{}-{}@test", std::process::id(), me.port()),
            from: format!("<sip:{user}@{domain}>;tag=raw-{}", me.port()),
            to: format!("<{uri}>"),
            routes: Vec::new(),
            target: uri.clone(),
            cseq: 1,
            headers: String::new(),
        };
        (d, uri, sdp)
    }

    /// The next final answer (provisional ones and requests skipped).
    fn final_answer(&mut self) -> String {
        let mut buf = [0u8; 8192];
        loop {
            let text = match self.conn.as_mut() {
                Some(conn) => conn.next(Duration::from_secs(10)).unwrap().expect("no final answer in 10 s"),
                None => {
                    let (n, _) = self.sock.recv_from(&mut buf).expect("no final answer in 10 s");
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                }
            };
            if text.starts_with("SIP/2.0") && !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }

    /// Writes a message to the edge, over the connection if there is one.
    fn transmit(&mut self, msg: &str) {
        match self.conn.as_mut() {
            Some(conn) => conn.send(msg).unwrap(),
            None => {
                self.sock.send_to(msg.as_bytes(), self.edge).unwrap();
            }
        }
    }

    /// This end as Via (`UDP address:port`, `WSS name.invalid`) and as a Contact URI.
    fn me(&self) -> (String, String) {
        match &self.conn {
            Some(conn) => {
                let host = conn.via().split(' ').nth(1).unwrap_or_default().to_string();
                (conn.via().to_string(), format!("sip:raw@{host};transport=ws"))
            }
            None => {
                let me = self.sock.local_addr().unwrap();
                (format!("UDP {me}"), format!("sip:raw@{me}"))
            }
        }
    }

    fn request(&self, method: &str, uri: &str, extra: &str, body: &str) -> String {
        let (via, contact) = self.me();
        let routes: String = self.routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-{}-{method}-{};rport\r\n{routes}\
             Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
             Contact: <{contact}>\r\n{}{extra}Content-Length: {}\r\n\r\n{body}",
            self.call_id.len(),
            self.cseq,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.headers,
            body.len()
        )
    }

    /// Sends a request; its final answer (requests from the far end are skipped).
    fn send(&mut self, msg: &str) -> String {
        self.transmit(msg);
        self.final_answer()
    }

    /// The ACK to a failure answer: the INVITE's Via and route set, the answer's To (RFC 3261
    /// 17.1.1.3).
    fn ack_failure(&mut self, answer: &str, uri: &str) {
        let (_, contact) = self.me();
        let via = header_of(answer, "Via").unwrap_or_default();
        let to = header_of(answer, "To").unwrap_or_default();
        let routes: String = self.routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: {via}\r\n{routes}Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\n\
             Call-ID: {}\r\nCSeq: {} ACK\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n",
            self.from, self.call_id, self.cseq
        );
        self.transmit(&ack);
    }

    /// The same dialog sent from another socket (another source port): what someone who saw the
    /// call's headers could send.
    fn sent_elsewhere(&self) -> RawDialog {
        let sock = local_socket(Duration::from_secs(10));
        RawDialog {
            sock,
            conn: None,
            edge: self.edge,
            call_id: self.call_id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            routes: self.routes.clone(),
            target: self.target.clone(),
            cseq: self.cseq,
            headers: self.headers.clone(),
        }
    }

    /// An in-dialog request (next CSeq) to `uri`; the status line of its final answer.
    fn in_dialog(&mut self, method: &str, uri: &str) -> String {
        self.cseq += 1;
        let msg = self.request(method, uri, "", "");
        self.send(&msg).lines().next().unwrap_or_default().to_string()
    }
}

/// The value of the first header `name` in a SIP message.
fn header_of<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The edge's bans outlive a restart and a kill: each written to the database as it is made, read
/// back with its expiry as the edge starts.
#[test]
fn the_edges_bans_outlive_its_restart() {
    use crate::common::attacker::Peer;
    use crate::common::sip::{options_over_udp, Registrar};
    let Some([guesser, bystander, second]) = peers_first(["keep", "other", "kill"]) else { return };
    const BAN_SECONDS: u64 = 600;
    let Some(stack) = Stack::start("banstay", |s| {
        format!("{s}\n[security]\nban_after = 2\nfind_seconds = 60\nban_seconds = {BAN_SECONDS}\n")
    }) else {
        return;
    };
    let (sip, domain) = (stack.plan.network.sip_port, stack.plan.tls.domain.clone());
    let options = |peer: &Peer| {
        let to = peer.to(sip);
        peer.run(move || options_over_udp(to, Duration::from_secs(2)))
    };
    // Wrong passwords over UDP until the edge stops answering: exactly 2 answered.
    let guess = |peer: &Peer| {
        let to = peer.to(sip);
        let domain = domain.clone();
        peer.run(move || {
            let mut session = Registrar::udp(to, &domain, "3001", "wrong-password-xxxxxxxx").unwrap();
            (0..10).take_while(|_| session.register().is_ok()).count()
        })
    };
    let rows = || stack.sql("SELECT key_name || ' ' || (expires - extract(epoch FROM now())::int) FROM htable");
    assert!(options(&guesser).is_some(), "the edge does not answer the guesser before any guess");
    assert_eq!(guess(&guesser), 2, "wrong passwords answered before the ban");
    assert!(options(&guesser).is_none(), "the guesser is not banned");
    assert!(options(&bystander).is_some(), "the bystander is not answered");
    // The ban is in the database as soon as it is made (the edge still runs).
    let written = rows();
    eprintln!("htable rows while the edge runs (address, seconds left): {written:?}");
    assert!(written.contains(&guesser.ip.to_string()), "the ban was not written as it was made: {written:?}");

    // The edge restarts (docker compose stop, then up).
    let edge = container_of(&stack, "edge");
    let before = started_and_pid(&edge);
    // The edge stops within its grace period (compose's 5 s) by itself — exit 0, not Docker's
    // SIGKILL (137): Kamailio's shutdown (dialogs, registrations) runs.
    let stopping = Instant::now();
    let out = stack.project.run(&["stop", "edge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exit = Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &edge]).output().unwrap();
    let exit = String::from_utf8_lossy(&exit.stdout).trim().to_string();
    eprintln!("the edge stopped in {:.1?}, exit code {exit}", stopping.elapsed());
    assert_eq!(exit, "0", "the edge did not shut down by itself (137: killed at the end of its grace period)");
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(started_and_pid(&container_of(&stack, "edge")), before, "the edge did not restart");
    let after = rows();
    eprintln!("htable rows after the restart (address, seconds left): {after:?}");
    if !after.contains(&guesser.ip.to_string()) {
        stack.save_logs("cluster_banstay");
    }
    assert!(after.contains(&guesser.ip.to_string()), "the ban is not in the database: {after:?}");
    // The bystander is answered by the new edge; the guesser still is not.
    let back = wait_until(Duration::from_secs(10), || options(&bystander).is_some());
    assert!(back.is_some(), "the restarted edge does not answer the bystander");
    assert!(options(&guesser).is_none(), "the restart lifted the guesser's ban");
    let ipban = || stack.exec("edge", &["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "htable.dump", "ipban"]);
    let banned = ipban();
    eprintln!("the restarted edge's ipban: {}", banned.split_whitespace().collect::<Vec<_>>().join(" "));
    assert!(banned.contains(&guesser.ip.to_string()), "the restarted edge has no ban for the guesser: {banned}");

    // A second guesser is banned by the restarted edge, which is then killed (SIGKILL: no
    // shutdown at all) and started again: both bans hold.
    assert_eq!(guess(&second), 2, "wrong passwords answered before the second ban");
    assert!(options(&second).is_none(), "the second guesser is not banned");
    let edge = container_of(&stack, "edge");
    let out = Command::new("docker").args(["kill", "--signal", "KILL", &edge]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the killed edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    let back = wait_until(Duration::from_secs(10), || options(&bystander).is_some());
    assert!(back.is_some(), "the edge started after the kill does not answer the bystander");
    let banned = ipban();
    eprintln!(
        "the ipban of the edge started after the kill: {}",
        banned.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    for (who, peer) in [("the first guesser", &guesser), ("the second guesser", &second)] {
        assert!(options(peer).is_none(), "the kill lifted {who}'s ban");
        assert!(
            banned.contains(&peer.ip.to_string()),
            "the edge started after the kill has no ban for {who}: {banned}"
        );
    }
}

#[test]
fn a_user_is_refused_over_a_transport_the_spec_does_not_give_it() {
    use crate::common::sip::Registrar;
    // (3002 may hold two registrations: one over its old transport, one over its new.)
    let Some(stack) = Stack::start("transport", |s| {
        s.replacen("id = \"3002\"\nkind = \"sip\"\n", "id = \"3002\"\nkind = \"sip\"\nmax_contacts = 2\n", 1)
    }) else {
        return;
    };
    let domain = stack.plan.tls.domain.clone();
    let udp = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let ca = stack.ca_pem();
    let over_udp =
        |user: &str| Registrar::udp(udp, &domain, user, &stack.password(user)).and_then(|mut r| r.register());
    let over_wss =
        |user: &str| Registrar::open(wss, &domain, &ca, user, &stack.password(user)).and_then(|mut r| r.register());
    // Each user over its own transport registers; over another one, with the right password, it
    // gets 403 and is not registered: the TLS phone 3010 over UDP, the browser 199 over UDP, the
    // UDP phone 3001 over WSS.
    assert_eq!(over_udp("3001"), Ok(200), "3001 over UDP (its transport)");
    assert_eq!(over_wss("199"), Ok(200), "199 over WSS (its transport)");
    for (user, how, status) in
        [("3010", "UDP", over_udp("3010")), ("199", "UDP", over_udp("199")), ("3001", "WSS", over_wss("3001"))]
    {
        eprintln!("{user} registering over {how}: {status:?}");
        assert_eq!(status, Ok(403), "{user} registering over {how}, a transport the spec does not give it");
    }
    // The browser over SIP-TLS (a port for phones) is refused as well.
    let edge_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let mut tls = SipConnection::tls(edge_tls, &domain, &ca).expect("a TLS connection to the edge");
    let answer =
        register_over(&mut tls, edge_tls, "199", &stack.password("199"), "sip:199@10.77.0.9:5061;transport=tls");
    eprintln!("199 registering over TLS: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 403"), "199 registering over TLS got: {answer}");
    let rows = stack.sql("SELECT username || ' ' || contact FROM location ORDER BY username");
    eprintln!("location: {rows:?}");
    let of = |user: &str| rows.lines().filter(|l| l.starts_with(&format!("{user} "))).collect::<Vec<_>>();
    assert!(of("3010").is_empty(), "3010 was registered over UDP: {rows}");
    assert!(of("3001").iter().all(|l| !l.contains("transport=ws")), "3001 was registered over WSS: {rows}");
    assert!(of("199").len() == 1 && of("199")[0].contains("transport=ws"), "199 is not only its WSS contact: {rows}");
    // Nor can a user call over the wrong one: the TLS phone's INVITE over UDP (its offer's SDES
    // keys in the clear) gets 403 once its credentials are checked.
    let mut call =
        RawDialog::invite(udp, &domain, "3010", &stack.password("3010"), &stack.plan.dialplan.echo_extension);
    let answer = call.final_answer();
    eprintln!("3010 calling over UDP: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 403"), "3010 calling over UDP got: {answer}");

    // The spec moves 3002 from UDP to TLS while a UDP phone is registered as 3002: `astrtc apply`
    // says so, and the edge no longer rings that registration (the caller gets 480, nothing
    // reaches the phone) nor takes 3002 over UDP again.
    let phone = local_socket(Duration::from_secs(3));
    let contact = format!("sip:3002@{}", phone.local_addr().unwrap());
    let answer = register_from(&phone, udp, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 200"), "3002 over UDP before the change: {answer}");
    let spec = stack.dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited =
        text.replacen("id = \"3002\"\nkind = \"sip\"\n", "id = \"3002\"\nkind = \"sip\"\ntransport = \"tls\"\n", 1);
    assert_ne!(edited, text, "the spec edit did not take");
    std::fs::write(&spec, edited).unwrap();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply:\n{stdout}");
    assert!(out.status.success(), "apply failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 transport(s) changed: 3002)"), "{stdout}");
    let mut call = RawDialog::invite(udp, &domain, "3001", &stack.password("3001"), "3002");
    let answer = call.final_answer();
    eprintln!("a call to 3002, registered over UDP only: {}", answer.lines().next().unwrap_or_default());
    let reached = next_request(&phone, Duration::from_secs(2));
    assert!(reached.is_none(), "the call reached 3002's UDP registration: {reached:?}");
    assert!(answer.starts_with("SIP/2.0 480"), "a call to 3002 registered over UDP only got: {answer}");
    let answer = register_from(&phone, udp, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 403"), "3002 over UDP after the change: {answer}");
    // 3002 registers over TLS as well: a call rings that registration, and still not the UDP one.
    let mut tls_phone = SipConnection::tls(edge_tls, &domain, &ca).expect("a TLS connection to the edge");
    let tls_contact = "sip:3002@10.77.0.8:5061;transport=tls";
    let answer = register_over(&mut tls_phone, edge_tls, "3002", &stack.password("3002"), tls_contact);
    assert!(answer.starts_with("SIP/2.0 200"), "3002 over TLS after the change: {answer}");
    let _ringing = RawDialog::invite(udp, &domain, "3001", &stack.password("3001"), "3002");
    let invite = loop {
        match tls_phone.next(Duration::from_secs(5)).expect("the TLS connection stays open") {
            Some(m) if m.starts_with("INVITE ") => break Some(m),
            Some(_) => continue,
            None => break None,
        }
    };
    eprintln!("3002's TLS registration got: {:?}", invite.as_deref().and_then(|m| m.lines().next()));
    assert!(invite.is_some(), "a call to 3002 did not ring its TLS registration");
    let reached = next_request(&phone, Duration::from_secs(2));
    assert!(reached.is_none(), "the call reached 3002's UDP registration too: {reached:?}");
    // A user the database has no astrtc_user row for (written by hand) is refused, not let
    // through over any transport.
    stack.sql("DELETE FROM astrtc_user WHERE username = '3001'");
    assert_eq!(over_udp("3001"), Ok(500), "3001 without its astrtc_user row");
    let log = edge_log(&stack);
    // (Counted once per request, by the log prefix's method, CSeq and Call-ID: a retransmission
    // of one is logged again.)
    let once = |what: &[&str]| -> Vec<&str> {
        let mut requests: Vec<&str> = log
            .lines()
            .filter(|l| what.iter().all(|w| l.contains(w)))
            .filter_map(|l| l.split_once('{')?.1.split_once('}'))
            .map(|(p, _)| p)
            .collect();
        requests.sort_unstable();
        requests.dedup();
        requests
    };
    let refused: &[&str] = &["astrtc: refused", "the spec gives it"];
    for (what, want) in [(refused, 6), (&["astrtc: not ringing 3002 "], 2), (&["has no row in astrtc_user"], 1)] {
        let requests = once(what);
        assert_eq!(requests.len(), want, "the edge did not log {what:?} once for each request: {requests:#?}");
    }
}
