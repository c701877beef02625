//! The edge's own behaviour: a restart keeping registrations, NAT keepalives, a renewed
//! certificate, `max_contacts` (proofs 4, 9 and 10 in `cluster`'s doc).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use astrtc::media::probe;
use astrtc::media::session::SharedMedia;

use crate::common::sip::SipConnection;

use super::{
    assert_echoed, container_of, edge_log, flood_options, local_socket, next_request, register_from,
    register_from_then, register_over, runtime, started_and_pid, wait_until, Stack,
};

/// A cluster whose user 3001 has `max_contacts = 2`.
fn stack_with_two_contacts_for_3001(test: &str) -> Option<Stack> {
    let stack = Stack::start(test, |s| {
        s.replacen("id = \"3001\"\nkind = \"sip\"\n", "id = \"3001\"\nkind = \"sip\"\nmax_contacts = 2\n", 1)
    })?;
    let limit = stack.plan.endpoints.iter().find(|e| e.id == "3001").map(|e| e.max_contacts);
    assert_eq!(limit, Some(2), "the spec edit did not take");
    Some(stack)
}

#[test]
fn a_nated_udp_phone_is_kept_alive_and_tls_or_direct_ones_are_not() {
    // Two phones behind the NAT: 3010 over TLS (its transport), 3001 over UDP.
    let Some(stack) = Stack::start("natping", |s| s) else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let edge_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let every = Duration::from_secs(u64::from(stack.cluster().natping_seconds));
    // Behind a NAT over TLS, first: its Contact a private address, its connection held open. The
    // edge flags it as behind a NAT but, the connection being the phone's to keep, never pings it.
    let mut over_tls =
        SipConnection::tls(edge_tls, &stack.plan.tls.domain, &stack.ca_pem()).expect("a TLS connection to the edge");
    let tls_contact = "sip:3010@10.77.0.7:5061;transport=tls";
    let answer = register_over(&mut over_tls, edge_tls, "3010", &stack.password("3010"), tls_contact);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    // Behind a NAT over UDP: the Contact names a private address the edge cannot reach; the edge
    // keeps the address the REGISTER came from (received) and flags the contact.
    let nated = local_socket(Duration::from_secs(5));
    let answer = register_from(&nated, edge, "3001", &stack.password("3001"), "sip:3001@10.77.0.5:5060");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    // Not behind one: the Contact is the address it sends from.
    let direct = local_socket(Duration::from_secs(5));
    let contact = format!("sip:3002@{}", direct.local_addr().unwrap());
    let answer = register_from(&direct, edge, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let t0 = Instant::now();
    let ping = next_request(&nated, every * 2 + Duration::from_secs(2)).unwrap_or_else(|| {
        panic!("no keepalive in {:?} (natping_seconds {every:?})", every * 2 + Duration::from_secs(2))
    });
    eprintln!("keepalive {:.1?} after the registration:\n{ping}", t0.elapsed());
    assert!(ping.starts_with("OPTIONS sip:3001@10.77.0.5:5060 "), "{ping}");
    assert!(ping.contains("keepalive@"), "{ping}");
    // A second one: kept alive, not pinged once.
    assert!(next_request(&nated, every * 2 + Duration::from_secs(2)).is_some_and(|p| p.starts_with("OPTIONS ")));
    eprintln!("two keepalives to the UDP phone {:.1?} after the registrations", t0.elapsed());
    // The direct phone got none in the same time.
    let direct_got = next_request(&direct, Duration::from_millis(10));
    assert!(direct_got.is_none(), "a phone not behind a NAT was pinged: {direct_got:?}");
    // Nor did the TLS phone, registered before both UDP phones: the keepalive timer went over
    // the contacts at least twice meanwhile (the UDP phone's two OPTIONS).
    let mut over_tls_got = Vec::new();
    while let Some(message) = over_tls.next(Duration::from_millis(10)).expect("the TLS connection stays open") {
        over_tls_got.push(message);
    }
    eprintln!("messages on the TLS phone's connection since its registration: {}", over_tls_got.len());
    assert!(over_tls_got.is_empty(), "a phone behind a NAT over TLS was pinged: {over_tls_got:?}");
    // The edge's part in that: of the two contacts behind a NAT, only the UDP one is flagged for
    // keepalives (FLB_NATB,
    // branch flag 6: bit 64 of `cflags`). nathelper itself skips a contact whose address names
    // TCP or TLS, so the flag is what the edge's config decides.
    let row = |contact: &str| {
        let out = stack.sql(&format!("SELECT cflags, received FROM location WHERE contact = '{contact}'"));
        let (cflags, received) = out.trim().split_once('|').unwrap_or_else(|| panic!("{contact} is not registered"));
        (cflags.parse::<u32>().unwrap() & 64 != 0, received.to_string())
    };
    let (tls_flagged, tls_received) = row(tls_contact);
    let (udp_flagged, udp_received) = row("sip:3001@10.77.0.5:5060");
    eprintln!("flagged for keepalives: over TLS {tls_flagged} (received {tls_received}), over UDP {udp_flagged} (received {udp_received})");
    assert!(tls_received.ends_with(";transport=tls"), "the TLS phone was not taken as behind a NAT: {tls_received:?}");
    assert!(udp_flagged, "the UDP phone behind a NAT is not flagged for keepalives");
    assert!(
        !tls_flagged,
        "the TLS phone behind a NAT is flagged for keepalives (FLB_NATB): the edge sets it over UDP only"
    );
}

#[test]
fn a_renewed_certificate_reaches_both_edge_listeners_and_their_connections_stay() {
    use astrtc::media::ws::WsConn;
    let Some(stack) = Stack::start("certs", |s| s) else { return };
    // The edge's start time and process: a restart in place keeps the container's id, not these.
    let pid = || started_and_pid(&container_of(&stack, "edge"));
    let edge_before = pid();
    let domain = stack.plan.tls.domain.clone();
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let sip_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let ca = stack.ca_pem();
    let serial_on = |at: SocketAddr| astrtc::verify::check_tls(at, &domain, &ca).expect("the edge's TLS").leaf.serial;
    let serial = || serial_on(wss);
    let before = serial();
    assert_eq!(serial_on(sip_tls), before, "the SIP-over-TLS port serves another certificate than the WSS port");
    let rt = runtime();
    // A browser's connection, opened before the renewal: it carries a REGISTER (answered 401).
    let register = |n: u32| {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WSS held.invalid;branch=z9hG4bK-held-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:199@{domain}>;tag=held\r\nTo: <sip:199@{domain}>\r\n\
             Call-ID: held@test\r\nCSeq: {n} REGISTER\r\nContact: <sip:199@held.invalid;transport=ws>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let mut held = rt.block_on(WsConn::connect(wss, &domain, &ca, "/ws")).expect("a WebSocket to the edge");
    let answer = rt.block_on(async {
        held.send_text(&register(1)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), held.recv_text()).await
    });
    assert!(matches!(&answer, Ok(Ok(a)) if a.starts_with("SIP/2.0 401")), "{answer:?}");
    // A phone's SIP-over-TLS connection, opened before the renewal too: an OPTIONS is answered.
    let mut phone = SipConnection::tls(sip_tls, &domain, &ca).expect("a SIP-over-TLS connection to the edge");
    let options = |phone: &mut SipConnection, n: usize| {
        let via = phone.via().to_string();
        phone.send(&flood_options(&via, sip_tls, n)).unwrap();
        phone.next(Duration::from_secs(5))
    };
    let answer = options(&mut phone, 1);
    assert!(matches!(&answer, Ok(Some(a)) if a.starts_with("SIP/2.0 ")), "{answer:?}");

    // First a pair that does not match (a new certificate, the old key): the reload fails and the
    // old certificate stays in use.
    let keys = stack.dir.path().join("deploy/keys");
    let old_key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    crate::common::docker::install_leaf_for(stack.dir.path(), &stack.plan, &domain);
    let new_key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    crate::common::docker::overwrite_keep_mode(&keys.join("asterisk.key"), &old_key);
    let refused = wait_until(Duration::from_secs(30), || {
        edge_log(&stack).contains("tls.reload failed, the old one stays in use")
    });
    assert!(
        refused.is_some(),
        "no failed reload logged for a key that does not match its certificate:\n{}",
        edge_log(&stack)
    );
    assert_eq!(serial(), before, "a mismatched pair replaced the certificate");
    assert_eq!(serial_on(sip_tls), before, "a mismatched pair replaced the SIP-over-TLS certificate");
    // Then the key that matches.
    crate::common::docker::overwrite_keep_mode(&keys.join("asterisk.key"), &new_key);
    let took = wait_until(Duration::from_secs(30), || serial() != before);
    let log = stack.project.run(&["logs", "--no-color", "edge"]);
    let log = String::from_utf8_lossy(&log.stderr).into_owned() + &String::from_utf8_lossy(&log.stdout);
    let took = took.unwrap_or_else(|| panic!("the edge still serves serial {before} 30 s after the renewal:\n{log}"));
    eprintln!("the edge served the new certificate {took:.1?} after the files changed (was serial {before})");
    assert!(log.contains("astrtc-edge: the certificate changed; tls.reload"), "{log}");
    assert_eq!(pid(), edge_before, "the edge was restarted");
    // The SIP-over-TLS port serves the new certificate too (one reload for both listeners).
    let new = serial();
    let on_sip_tls = wait_until(Duration::from_secs(10), || serial_on(sip_tls) == new);
    assert!(
        on_sip_tls.is_some(),
        "the SIP-over-TLS port still serves serial {} after the WSS port took {new}",
        serial_on(sip_tls)
    );
    eprintln!("the SIP-over-TLS port serves the new certificate (serial {new}) too");
    let answer = options(&mut phone, 2);
    assert!(
        matches!(&answer, Ok(Some(a)) if a.starts_with("SIP/2.0 ")),
        "the SIP-over-TLS connection opened before the renewal no longer carries SIP: {answer:?}"
    );
    // The connection from before still carries SIP.
    let answer = rt.block_on(async {
        held.send_text(&register(2)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), held.recv_text()).await
    });
    assert!(
        matches!(&answer, Ok(Ok(a)) if a.starts_with("SIP/2.0 401")),
        "the WebSocket opened before the renewal no longer carries SIP: {answer:?}"
    );
    rt.block_on(held.close());
}

#[test]
fn an_edge_restart_keeps_registrations() {
    let Some(stack) = Stack::start("edge-restart", |s| s) else { return };
    let rt = runtime();
    let edge_sip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let restart_edge = || {
        let t0 = Instant::now();
        let out = stack.project.run(&["restart", "edge"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
        assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("edge restarted and healthy in {:.1?}", t0.elapsed());
    };
    let phone = rt
        .block_on(astrtc::media::answer::AnsweringPhone::register(
            edge_sip,
            "3002",
            &stack.password("3002"),
            &stack.plan.tls.domain,
        ))
        .expect("the UDP phone could not register at the edge");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let running = rt.spawn(phone.run(stopped));
    let row = || stack.sql("SELECT ruid, contact, received, expires FROM location WHERE username = '3002'");
    let before = row();
    eprintln!("registration before the restart: {}", before.trim());
    assert!(!before.trim().is_empty(), "the phone's registration is not in the database");

    // The edge's rtpengine cookies carry its server_id: a new one on every start, or the
    // restarted edge's first commands would get replies rtpengine kept for the old one's.
    let server_id = || {
        let out = stack.exec("edge", &["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "core.ppdefines_full"]);
        // Blocks of `name: N`, `type: T`, `value: V`.
        let mut lines = out.lines().map(str::trim).skip_while(|l| *l != "name: SERVER_ID");
        lines
            .find_map(|l| l.strip_prefix("value: ").map(str::to_string))
            .unwrap_or_else(|| panic!("no SERVER_ID among the edge's defines:\n{out}"))
    };
    let id_before = server_id();
    restart_edge();
    let id_after = server_id();
    eprintln!("edge server_id {id_before} before the restart, {id_after} after");
    assert_ne!(id_before, id_after, "the restarted edge kept its server_id (rtpengine cookies would collide)");
    let after = row();
    assert_eq!(before, after, "the registration changed across the edge restart");

    // Called through the restarted edge without registering again: audio both ways (the phone
    // echoes what it receives; the caller matches what comes back).
    let report = rt
        .block_on(probe::call(&stack.sip_setup("3001", "3002", Duration::from_secs(4)), &SharedMedia::new().unwrap()));
    stop.send(()).unwrap();
    let phone = rt.block_on(running).unwrap().unwrap();
    eprintln!("the phone: {phone:?}");
    if !report.healthy() {
        stack.save_logs("cluster_edge_restart");
    }
    assert_echoed("call to the phone after the restart", &report, 100);
    assert_eq!(phone.confirmed, 1, "the phone did not answer exactly one call: {phone:?}");
    assert!(phone.echoed >= 100, "the phone received only {} packets", phone.echoed);

    // A call to the echo extension, up across a second restart: its BYE, sent after it, must
    // still be taken as the edge's own call's (the dialog kept in the database) and reach the pool.
    const HOLD: Duration = Duration::from_secs(15);
    let held_started = Instant::now();
    let held = rt.spawn({
        let setup = stack.sip_setup("3001", &stack.plan.dialplan.echo_extension, HOLD);
        async move { probe::call(&setup, &SharedMedia::new().unwrap()).await }
    });
    let dialog_up = wait_until(Duration::from_secs(10), || stack.sql("SELECT count(*) FROM dialog").trim() != "0");
    assert!(dialog_up.is_some(), "the held call's dialog is not in the database");
    restart_edge();
    // The held call hangs up `HOLD` after it was answered, so after this point.
    assert!(held_started.elapsed() < HOLD, "the edge was back only after the held call's BYE");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_edge_restart");
    }
    // 15 s at 50 packets a second: a gap of 1 s or more in the restart would fail this.
    assert_echoed("call held across the restart", &held, 700);
    assert_eq!(
        held.hangup.as_deref(),
        Some("BYE answered 200 OK"),
        "the held call's BYE after the restart:\n{}",
        held.ladder.join("\n")
    );
}

/// How many times the edge's log says it made room for 3001, once the lines for the devices
/// `last` (their contacts: the newest devices) are there or 10 s have passed: Kamailio writes a
/// line before it answers, but Docker copies a container's log on its own time, so an answer can
/// come before its line is readable (waiting for a count instead would take an extra line, the
/// bug counted, for the one still to come).
fn made_room_lines(stack: &Stack, last: &[String]) -> usize {
    const LINE: &str = "astrtc: 3001 has 2 registrations: the one refreshed longest ago makes room";
    let lines =
        || -> Vec<String> { edge_log(stack).lines().filter(|l| l.contains(LINE)).map(str::to_string).collect() };
    let _ = wait_until(Duration::from_secs(10), || {
        let lines = lines();
        last.iter().all(|c| lines.iter().any(|l| l.contains(&format!("goes for {c})"))))
    });
    lines().len()
}

/// A user with `max_contacts = 2` and both taken: a refresh of one keeps both; a third device's
/// REGISTER is taken (200, not the registrar's 503) and the registration refreshed longest ago
/// makes room, as Asterisk's `remove_existing` does.
#[test]
fn a_new_device_past_max_contacts_replaces_the_one_refreshed_longest_ago() {
    use std::net::UdpSocket;
    let Some(stack) = stack_with_two_contacts_for_3001("room") else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let password = stack.password("3001");
    let phones: Vec<UdpSocket> = (0..3).map(|_| local_socket(Duration::from_secs(5))).collect();
    let contact = |i: usize| format!("sip:3001@{}", phones[i].local_addr().unwrap());
    let register = |i: usize| {
        let answer = register_from(&phones[i], edge, "3001", &password, &contact(i));
        answer.lines().next().unwrap_or_default().to_string()
    };
    let registered = || {
        let rows = stack.sql("SELECT contact FROM location WHERE username = '3001' ORDER BY contact");
        let mut v: Vec<String> = rows.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        v.sort();
        v
    };
    let want = |ids: &[usize]| {
        let mut v: Vec<String> = ids.iter().map(|i| contact(*i)).collect();
        v.sort();
        v
    };
    // The registrar keeps whole seconds: registrations a second apart, so one is the oldest.
    let next_second = || {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let start = now();
        assert!(wait_until(Duration::from_secs(3), || now() > start).is_some(), "the clock stood still");
    };
    assert_eq!(register(0), "SIP/2.0 200 OK", "the first device");
    next_second();
    assert_eq!(register(1), "SIP/2.0 200 OK", "the second device");
    assert_eq!(registered(), want(&[0, 1]));
    next_second();
    // At the limit, a refresh of a registered device needs no room: both stay, and the first is
    // now the one refreshed last.
    assert_eq!(register(0), "SIP/2.0 200 OK", "the first device's refresh");
    assert_eq!(registered(), want(&[0, 1]), "a refresh at the limit removed a registration");
    next_second();
    // A third device: taken, and the second (refreshed longest ago) makes room.
    let third = register(2);
    eprintln!("a third device with max_contacts = 2: {third}");
    if third != "SIP/2.0 200 OK" {
        stack.save_logs("cluster_room");
    }
    assert_eq!(third, "SIP/2.0 200 OK", "a new device past max_contacts was refused");
    let left = registered();
    if left != want(&[0, 2]) {
        // What the edge chose, and each registration's times as the database has them.
        stack.save_logs("cluster_room");
        let chose: Vec<String> =
            edge_log(&stack).lines().filter(|l| l.contains("makes room")).map(str::to_string).collect();
        let rows = stack.sql("SELECT contact, last_modified, expires, cseq FROM location WHERE username = '3001'");
        panic!(
            "not the registration refreshed longest ago made room: left {left:?}, want {:?} (devices 0, 1, 2: \
             {:?}); the edge: {chose:?}; the location table:\n{rows}",
            want(&[0, 2]),
            (0..3).map(contact).collect::<Vec<_>>()
        );
    }
    let made_room = made_room_lines(&stack, &[contact(2)]);
    assert_eq!(
        made_room, 1,
        "the edge made room {made_room} times for one new device (a refresh taken for a new one?)"
    );

    // Two new devices at once, both past the limit, in ten rounds: each is taken and the two are
    // what is left (the edge makes room for one REGISTER of a user at a time; without that, both
    // removed the same registration and the second save found no room: 503).
    // (Every device's socket is kept to the end: a port freed could come back as a new device's,
    // whose REGISTER would then be a registered contact's refresh.)
    let mut devices: Vec<UdpSocket> = Vec::new();
    for round in 0..10 {
        next_second();
        devices.extend((0..2).map(|_| local_socket(Duration::from_secs(5))));
        let pair = &devices[devices.len() - 2..];
        let contacts: Vec<String> = pair.iter().map(|p| format!("sip:3001@{}", p.local_addr().unwrap())).collect();
        // Both challenged, then both credentials sent at once (a device not challenged within
        // 10 s of the other does not hold it up: its answer fails the round).
        let arrived = (std::sync::Mutex::new(0), std::sync::Condvar::new());
        let together = || {
            let mut n = arrived.0.lock().unwrap();
            *n += 1;
            arrived.1.notify_all();
            let _ = arrived.1.wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2).unwrap();
        };
        let answers: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = pair
                .iter()
                .zip(&contacts)
                .map(|(sock, contact)| {
                    let (password, together) = (&password, &together);
                    s.spawn(move || {
                        let answer = register_from_then(sock, edge, "3001", password, contact, together);
                        answer.lines().next().unwrap_or_default().to_string()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        eprintln!("two new devices at once, round {round}: {answers:?}");
        if answers.iter().any(|a| a != "SIP/2.0 200 OK") {
            stack.save_logs("cluster_room");
        }
        assert_eq!(answers, ["SIP/2.0 200 OK"; 2], "round {round}: two new devices at once past max_contacts");
        let mut both = contacts.clone();
        both.sort();
        assert_eq!(registered(), both, "round {round}: not the two new devices are left");
    }
    let last_pair: Vec<String> =
        devices[devices.len() - 2..].iter().map(|p| format!("sip:3001@{}", p.local_addr().unwrap())).collect();
    let made_room = made_room_lines(&stack, &last_pair);
    assert_eq!(made_room, 21, "the edge made room {made_room} times for 21 new devices");
}

/// The edge's entrypoint takes the pool's list from `ASTRTC_EDGE_DISPATCHER_LIST` (compose's and
/// the Helm chart's, written by the pool watcher) and hands its path to `kamailio.cfg` as a
/// define in quotes: a relative path, or one with a character that could end the define's
/// string, is refused before Kamailio runs, and so is a list that is not there. (The list taken
/// from the variable is what the podman run's dispatcher holds.)
#[test]
fn the_edges_entrypoint_refuses_a_dispatcher_list_it_cannot_hand_to_kamailio() {
    if crate::common::docker_off() {
        return;
    }
    crate::common::docker::ensure_cluster_images();
    let image = crate::common::docker::cluster_test_image(astrtc::image::ClusterImage::Edge);
    // The two files the entrypoint checks before the list, readable by the edge's user.
    let dir = tempfile::tempdir().unwrap();
    for file in ["kamailio.cfg", "database.cfg"] {
        std::fs::write(dir.path().join(file), "# not read: the entrypoint stops first\n").unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |list: Option<&str>| {
        let mut command = std::process::Command::new("docker");
        command.args(["run", "--rm", "-v"]).arg(format!("{}:/etc/astrtc-edge:ro", dir.path().display()));
        if let Some(list) = list {
            command.args(["-e", &format!("ASTRTC_EDGE_DISPATCHER_LIST={list}")]);
        }
        let out = command.arg(&image).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (list, code, says) in [
        (Some("run/astrtc-pool/dispatcher.list"), 64, "ASTRTC_EDGE_DISPATCHER_LIST must be an absolute path"),
        (Some("/run/x\" -A \"WITH_EVIL"), 64, "ASTRTC_EDGE_DISPATCHER_LIST may hold only A-Z a-z 0-9 / . _ -"),
        (Some("/run/astrtc-pool/dispatcher.list"), 65, "the pool's list /run/astrtc-pool/dispatcher.list is missing"),
        (None, 65, "the pool's list /run/astrtc-pool/dispatcher.list is missing"),
    ] {
        let (got, stderr) = run(list);
        assert_eq!(got, Some(code), "ASTRTC_EDGE_DISPATCHER_LIST={list:?}: exit {got:?}, said: {stderr}");
        assert!(stderr.contains(says), "ASTRTC_EDGE_DISPATCHER_LIST={list:?} said {stderr:?}, not {says:?}");
    }
}

/// The pool watcher (`astrtc-pool-watch`, the edge image's; compose's `pool-watch` service and the
/// chart's `pool` container run it) takes its settings from the environment and writes them into
/// a file Kamailio loads and the commands it runs: a name, port, cap or path it could not use as
/// given is refused (exit 64, saying which) before it resolves or writes anything. (What it does
/// with good ones is what the compose scaling test and the podman run assert.)
#[test]
fn the_pool_watcher_refuses_settings_it_cannot_use() {
    if crate::common::docker_off() {
        return;
    }
    crate::common::docker::ensure_cluster_images();
    let image = crate::common::docker::cluster_test_image(astrtc::image::ClusterImage::Edge);
    let good = [("POOL_SERVICE", "asterisk."), ("POOL_SIP_PORT", "5060")];
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new("docker");
        command.args(["run", "--rm", "--network", "none", "--entrypoint", "timeout"]);
        for (k, v) in good.iter().filter(|(k, _)| !env.iter().any(|(e, _)| e == k)).chain(env) {
            command.args(["-e", &format!("{k}={v}")]);
        }
        // Bounded: a watcher that takes its settings runs on, until `timeout` ends it (exit 124).
        let out = command.args([image.as_str(), "20", astrtc::image::POOL_WATCH]).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for (env, says) in [
        (&[("POOL_SERVICE", "")][..], "POOL_SERVICE must be a DNS name"),
        (&[("POOL_SERVICE", "asterisk;reboot")][..], "POOL_SERVICE must be a DNS name"),
        (&[("POOL_SERVICE", "-asterisk")][..], "POOL_SERVICE must be a DNS name"),
        (&[("POOL_SIP_PORT", "50x")][..], "POOL_SIP_PORT must be a port number"),
        (&[("POOL_SIP_PORT", "70000")][..], "POOL_SIP_PORT must be 1-65535"),
        (&[("POOL_MAX_MEMBERS", "0")][..], "POOL_MAX_MEMBERS must be at least 1"),
        (&[("POOL_LIST", "run/list")][..], "POOL_LIST must be an absolute path"),
        (&[("POOL_LIST", "/run/a list")][..], "POOL_LIST may hold only"),
        (&[("POOL_CIDR", "10.0.0.0/33")][..], "POOL_CIDR must be an IPv4 network"),
        (&[("POOL_CIDR", "fd00::/64")][..], "POOL_CIDR must be an IPv4 network"),
        (&[("POOL_CIDR", "10.0.0.0/8\n10.1.0.0/16")][..], "POOL_CIDR must be an IPv4 network"),
    ] {
        let (got, stderr) = run(env);
        assert_eq!(got, Some(64), "{env:?}: exit {got:?}, said: {stderr}");
        assert!(stderr.contains(says), "{env:?} said {stderr:?}, not {says:?}");
    }
}

/// With settings it takes, the pool watcher writes the list from the name's addresses (here from
/// the container's hosts file): with no Kamailio answering on the control socket, a member the
/// list does not name yet goes in active (flags 0) and one the list holds inactive (9: what the
/// probes last found) stays so, in C-locale order; an address outside `POOL_CIDR` is not taken
/// and is logged.
#[test]
fn the_pool_watcher_writes_the_names_addresses_inside_its_network_only() {
    if crate::common::docker_off() {
        return;
    }
    crate::common::docker::ensure_cluster_images();
    let image = crate::common::docker::cluster_test_image(astrtc::image::ClusterImage::Edge);
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let list = dir.path().join("dispatcher.list");
    let run = || {
        let out = std::process::Command::new("docker")
            .args(["run", "--rm", "--network", "none", "--entrypoint", "timeout"])
            .args(["--add-host", "asterisk:172.29.0.130", "--add-host", "asterisk:192.0.2.7"])
            .args(["--add-host", "asterisk:172.29.0.129"])
            .args(["-e", "POOL_SERVICE=asterisk", "-e", "POOL_SIP_PORT=5060", "-e", "POOL_CIDR=172.29.0.0/24"])
            .args(["-e", "POOL_LIST=/out/dispatcher.list", "-v"])
            .arg(format!("{}:/out", dir.path().display()))
            // Its first look is at once; it is stopped during the wait for its second.
            .args([image.as_str(), "4", astrtc::image::POOL_WATCH])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(124), "the watcher exited by itself: {stderr}");
        stderr
    };
    let lines = || -> Vec<String> {
        let text = std::fs::read_to_string(&list).unwrap_or_default();
        text.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect()
    };
    let said = run();
    eprintln!("pool watcher said: {said}");
    assert!(said.contains("asterisk resolves to 192.0.2.7 outside 172.29.0.0/24: not taken"), "{said}");
    assert_eq!(lines(), ["1 sip:172.29.0.129:5060 0 0", "1 sip:172.29.0.130:5060 0 0"]);
    // What the probes found, as the list last held it: .129 inactive.
    std::fs::write(&list, "# before\n1 sip:172.29.0.129:5060 9 0\n").unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o666)).unwrap();
    run();
    assert_eq!(lines(), ["1 sip:172.29.0.129:5060 9 0", "1 sip:172.29.0.130:5060 0 0"]);
}
