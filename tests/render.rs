//! Rendering through the library: one insta snapshot of every generated file per fixture spec,
//! plus the properties the configs must have whatever the spec says.

use crate::common::*;
use astrtc::certs::cert_facts;

#[test]
fn snapshots_of_every_fixture() {
    for case in fixture_cases() {
        let dir = fixture_copy(&case);
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap_or_else(|e| panic!("{case}: {e:?}"));
        let bundle = bundle_for(&plan);
        insta::assert_snapshot!(case.clone(), snapshot_text(&bundle));
    }
}

#[test]
fn the_guide_deployment_is_the_default() {
    let dir = fixture_copy("webrtc-self-signed");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let http = b.text("asterisk/http.conf").unwrap();
    assert!(http.contains("\ntlsenable = yes\n"));
    assert!(http.contains("\ntlsbindaddr = 0.0.0.0:8089\n"));
    assert!(http.contains("\nbindaddr = 127.0.0.1\n"), "plain HTTP must stay on loopback");
    assert!(http.contains("\ntlscertfile = /etc/asterisk-keys/asterisk.crt\n"));
    assert!(http.contains("\ntlsprivatekey = /etc/asterisk-keys/asterisk.key\n"));
    let rtp = b.text("asterisk/rtp.conf").unwrap();
    assert!(rtp.contains("\nrtpstart = 10000\nrtpend = 20000\n"));
    assert!(rtp.contains("\nicesupport = yes\n"));
    assert!(!rtp.contains("stunaddr") && !rtp.contains("turnaddr"));
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    assert!(pjsip.contains("[transport-wss]\ntype = transport\nprotocol = wss\n"));
    assert!(pjsip.contains("[transport-udp]\ntype = transport\nprotocol = udp\n"));
    assert!(pjsip.contains("webrtc = yes"));
    assert!(pjsip.contains("allow = opus,ulaw"));
    assert!(!pjsip.contains("password"), "passwords must stay out of pjsip.conf");
    assert!(pjsip.contains("#include pjsip_auth.conf"));
    let auth = b.text("asterisk/pjsip_auth.conf").unwrap();
    assert!(auth.contains("password = fixture-webrtc-199-password"));
    let ext = b.text("asterisk/extensions.conf").unwrap();
    assert!(ext.contains("exten => 600,1,Answer()\n same => n,Echo()"));
    for id in ["199", "3001", "3002"] {
        assert!(ext.contains(&format!("exten => {id},1,Dial(PJSIP/{id},30)")), "{id}");
    }
    // Production logging and calls that end when their far end vanished.
    assert!(b.text("asterisk/asterisk.conf").unwrap().contains("\nverbose = 0\n"));
    assert!(b.text("asterisk/logger.conf").unwrap().contains("\nconsole => notice,warning,error\n"));
    assert_eq!(pjsip.matches("\nrtp_timeout = 30\n").count(), 1, "the webrtc endpoint");
    assert_eq!(pjsip.matches("\nrtp_timeout = 60\n").count(), 2, "the sip endpoints");
    assert_eq!(pjsip.matches("\nrtp_timeout_hold = 600\n").count(), 3);
    let modules = b.text("asterisk/modules.conf").unwrap();
    assert!(modules.contains("autoload = yes"));
    assert!(modules.contains("noload = chan_iax2.so"));
    let leaf = cert_facts(b.text("keys/asterisk.crt").unwrap()).unwrap();
    assert_eq!(leaf.dns_names.into_iter().collect::<Vec<_>>(), ["pbx.example.test"]);
    let pem = b.text("keys/asterisk.pem").unwrap();
    assert!(pem.starts_with(b.text("keys/asterisk.crt").unwrap()));
    assert!(pem.ends_with(b.text("keys/asterisk.key").unwrap()));
}

#[test]
fn nat_settings_appear_only_with_a_public_address() {
    let dir = fixture_copy("nat-multi-endpoint");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    // Every transport (UDP, TLS, WSS) carries the NAT settings.
    assert_eq!(pjsip.matches("external_media_address = 203.0.113.10").count(), 3);
    assert_eq!(pjsip.matches("external_signaling_address = 203.0.113.10").count(), 3);
    assert_eq!(pjsip.matches("local_net = 10.20.0.0/16").count(), 3);
    let rtp = b.text("asterisk/rtp.conf").unwrap();
    assert!(rtp.contains("stunaddr = stun.example.test:3478"));
    assert!(rtp.contains("turnaddr = turn.example.test:3478"));
    assert!(!rtp.contains("fixture-turn-password"), "the TURN password belongs in rtp_turn.conf");
    assert!(b.text("asterisk/rtp_turn.conf").unwrap().contains("turnpassword = fixture-turn-password!"));

    let dir = fixture_copy("webrtc-self-signed");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    assert!(!bundle_for(&plan).text("asterisk/pjsip.conf").unwrap().contains("external_"));
}

#[test]
fn capacity_settings_reach_their_keys() {
    let dir = fixture_copy("nat-multi-endpoint");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    assert!(b.text("asterisk/http.conf").unwrap().contains("\nsessionlimit = 2500\n"));
    // The opus complexity reaches the codec as an environment variable, in compose and the chart.
    assert!(b.text("compose.yaml").unwrap().contains("\n      ASTRTC_OPUS_COMPLEXITY: \"4\"\n"));
    assert!(b.text("helm/astrtc/values.yaml").unwrap().contains("\n  opusComplexity: 4\n"));
    // Only bob (codec_preference = "spec") has his codec order win, in both directions.
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    let section = |id: &str| {
        let start = pjsip.find(&format!("\n[{id}]\ntype = endpoint")).unwrap();
        let end = pjsip[start + 1..].find("\n[").map(|e| start + 1 + e).unwrap();
        &pjsip[start..end]
    };
    for id in ["alice", "1001", "1002"] {
        assert!(!section(id).contains("codec_prefs"), "{}", section(id));
    }
    let bob = section("bob");
    assert!(bob.contains("allow = alaw,opus,g722"), "{bob}");
    for direction in ["incoming_offer", "outgoing_offer"] {
        let line =
            format!("codec_prefs_{direction} = prefer: configured, operation: intersect, keep: all, transcode: allow");
        assert!(bob.contains(&line), "{bob}");
    }

    // Defaults: 1000 sessions (Asterisk's own 100 would stop the 101st browser), client order.
    let dir = fixture_copy("webrtc-self-signed");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    assert!(b.text("asterisk/http.conf").unwrap().contains("\nsessionlimit = 1000\n"));
    assert!(!b.text("asterisk/pjsip.conf").unwrap().contains("codec_prefs"));
    // No complexity: libopus' default, nothing set.
    assert!(!b.text("compose.yaml").unwrap().contains("ASTRTC_OPUS_COMPLEXITY"));
    assert!(b.text("helm/astrtc/values.yaml").unwrap().contains("\n  opusComplexity: null\n"));
}

#[test]
fn secret_files_are_group_readable_only() {
    use astrtc::render::FileKind;
    let dir = fixture_copy("nat-multi-endpoint");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let secret: Vec<_> =
        b.files().iter().filter(|(_, f)| f.kind == FileKind::Secret).map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(
        secret,
        [
            "asterisk/pjsip_auth.conf",
            "asterisk/prometheus_auth.conf",
            "asterisk/rtp_turn.conf",
            "helm/astrtc/files/keys/asterisk.key",
            "helm/astrtc/files/metrics/password",
            "helm/astrtc/files/secrets/pjsip_auth.conf",
            "helm/astrtc/files/secrets/prometheus_auth.conf",
            "helm/astrtc/files/secrets/rtp_turn.conf",
            "keys/asterisk.key",
            "keys/asterisk.pem",
            "prometheus/metrics-password"
        ]
    );
    for (path, f) in b.files() {
        let text = String::from_utf8_lossy(&f.bytes);
        if f.kind == FileKind::Public {
            assert!(!text.contains("PRIVATE KEY"), "{} holds a key", path.display());
            assert!(!text.contains("fixture-"), "{} holds a password", path.display());
        }
    }
}

/// No `{:?}` of a plan shows a secret: every value of every fixture's secrets file (passwords,
/// the TURN secret, the cluster's database password and edge key, a rotation's previous key) is
/// absent from the plan's `Debug`, while the values beside them (user names, ids) are in it.
#[test]
fn a_plans_debug_shows_no_value_of_the_secrets_file() {
    fn strings(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) => out.push(s.clone()),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut seen = 0;
    for case in fixture_cases() {
        let dir = fixture_copy(&case);
        let secrets = dir.path().join("astrtc.secrets.toml");
        let mut text = std::fs::read_to_string(&secrets).unwrap();
        if text.contains("edge_key = ") {
            // A rotation under way, so the previous key is held too.
            text = text.replacen(
                "edge_key = ",
                "edge_key_previous = \"debugPreviousEdgeKey0123456789abc\"\nedge_key = ",
                1,
            );
            std::fs::write(&secrets, &text).unwrap();
        }
        let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
        let debug = format!("{plan:?}");
        let mut values = Vec::new();
        strings(&toml::from_str(&text).unwrap(), &mut values);
        assert!(!values.is_empty(), "{case}: no secret to look for");
        for value in &values {
            assert!(
                !debug.contains(value.as_str()),
                "{case}: the plan's Debug shows a secret ({} characters)",
                value.len()
            );
            seen += 1;
        }
        assert!(debug.contains("Secret(<redacted>)"), "{case}: no secret in the plan at all?");
        for e in &plan.endpoints {
            assert!(debug.contains(&format!("id: \"{}\"", e.id)), "{case}: the Debug lost endpoint {}", e.id);
        }
    }
    assert!(seen >= 20, "only {seen} secret values looked for");
}

#[test]
fn write_replaces_the_output_atomically_and_keeps_the_leaf() {
    let dir = fixture_copy("webrtc-self-signed");
    let out = dir.path().join("deploy");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    assert_eq!(astrtc::deploy::write(&plan, &out).unwrap(), astrtc::deploy::Written::Changed);
    // Nothing changed: nothing is written, so a running container keeps its mounts.
    let inode = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&out);
    assert_eq!(astrtc::deploy::write(&plan, &out).unwrap(), astrtc::deploy::Written::Unchanged);
    assert_eq!(inode(&out), before);
    std::fs::write(out.join("stray.txt"), "left by hand").unwrap();
    let crt = std::fs::read(out.join("keys/asterisk.crt")).unwrap();
    let ca = std::fs::read(out.join("keys/ca.crt")).unwrap();
    astrtc::deploy::write(&plan, &out).unwrap();
    assert!(!out.join("stray.txt").exists(), "the output directory is replaced as a whole");
    assert_eq!(std::fs::read(out.join("keys/asterisk.crt")).unwrap(), crt, "leaf re-issued without need");
    assert_eq!(std::fs::read(out.join("keys/ca.crt")).unwrap(), ca, "CA must survive re-renders");
    let report = astrtc::deploy::check(&plan, &out).unwrap();
    assert!(report.is_up_to_date(), "{report}");
    // No staging directories are left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".astrtc-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn secret_files_belong_to_the_asterisk_group_when_rendered_as_root() {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return; // chown to another group needs root; the non-root path uses group_add instead.
    }
    let dir = fixture_copy("webrtc-self-signed");
    let out = dir.path().join("deploy");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    astrtc::deploy::write(&plan, &out).unwrap();
    let gid = astrtc::render::file_gid(&out.join("keys/asterisk.key")).unwrap();
    assert_eq!(gid, astrtc::image::ASTERISK_UID);
}

#[test]
fn non_root_renders_add_the_users_group_to_the_container() {
    let dir = fixture_copy("webrtc-self-signed");
    let plan = plan_for(&dir.path().join("astrtc.toml"), astrtc::plan::HostFacts { uid: 1000, gid: 1234 }).unwrap();
    let compose = bundle_for(&plan).text("compose.yaml").unwrap().to_string();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&compose).unwrap();
    assert_eq!(doc["services"]["asterisk"]["group_add"][0].as_str(), Some("1234"));
}

#[test]
fn tls_phones_get_a_tls_transport_with_sdes_srtp_and_strict_ciphers() {
    let dir = fixture_copy("phones-tls");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    let section = |name: &str| -> String {
        let start = pjsip
            .find(&format!("[{name}]\ntype = {}", if name.starts_with("transport") { "transport" } else { "endpoint" }))
            .unwrap();
        pjsip[start..].split("\n\n").next().unwrap().to_string()
    };
    let tls = section("transport-tls");
    for line in [
        "protocol = tls",
        "bind = 0.0.0.0:15061",
        "cert_file = /etc/asterisk-keys/asterisk.crt",
        "priv_key_file = /etc/asterisk-keys/asterisk.key",
        "method = sslv23",
        &format!("cipher = {}", astrtc::render::asterisk::TLS_CIPHERS.join(",")),
    ] {
        assert!(tls.lines().any(|l| l == line), "{line:?} missing in\n{tls}");
    }
    assert!(section("3001").contains("transport = transport-tls\n"));
    assert!(section("3001").contains("media_encryption = sdes\n"));
    assert!(section("3002").contains("transport = transport-udp\n"));
    assert!(!section("3002").contains("media_encryption"));
    assert!(section("transport-udp").contains("bind = 0.0.0.0:15060"));
    for c in astrtc::render::asterisk::TLS_CIPHERS {
        assert!(c.starts_with("ECDHE-") && (c.contains("-GCM-") || c.contains("CHACHA20")), "{c}");
    }
    let http = b.text("asterisk/http.conf").unwrap();
    for line in ["tlsdisablev1 = yes", "tlsdisablev11 = yes", "tlsservercipherorder = yes"] {
        assert!(http.lines().any(|l| l == line), "{line}");
    }
    assert!(http.contains(&format!("tlscipher = {}\n", astrtc::render::asterisk::TLS_CIPHERS.join(":"))));
    let logger = b.text("asterisk/logger.conf").unwrap();
    assert!(logger.lines().any(|l| l == "security.log => security"));
}

#[test]
fn a_webrtc_only_spec_binds_sip_over_udp_to_loopback() {
    let dir = fixture_copy("webrtc-only");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    assert!(!plan.listeners.sip_udp_public && !plan.listeners.sip_tls);
    let b = bundle_for(&plan);
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    assert!(pjsip.contains("[transport-udp]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:15060\n"));
    assert!(!pjsip.contains("transport-tls"));
    let jail = b.text("guard/jail.d/astrtc.local").unwrap();
    assert!(jail.lines().any(|l| l == "port = 18089,40000:40999"), "the guard closes WSS and RTP only:\n{jail}");
}

#[test]
fn the_guard_follows_fail2ban_conventions_and_the_spec() {
    let dir = fixture_copy("phones-tls");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    // Only .local files, beside the package's untouched .conf files.
    let guard: Vec<String> =
        b.files().keys().filter(|p| p.starts_with("guard")).map(|p| p.display().to_string()).collect();
    assert_eq!(
        guard,
        [
            "guard/action.d/nftables.local",
            "guard/fail2ban.d/astrtc.local",
            "guard/filter.d/asterisk.local",
            "guard/jail.d/astrtc.local"
        ]
    );
    let jail = b.text("guard/jail.d/astrtc.local").unwrap();
    for line in [
        "[asterisk]",
        "enabled = true",
        "logpath = /var/log/asterisk/security.log",
        "maxretry = 5",
        "findtime = 600",
        "bantime = 3600",
        "ignoreip = 127.0.0.1/8 ::1/128 192.0.2.0/24 2001:db8::/32",
        "port = 15060,15061,18089,40000:40999",
        "banaction = nftables",
    ] {
        assert!(jail.lines().any(|l| l == line), "{line:?} missing in\n{jail}");
    }
    let action = b.text("guard/action.d/nftables.local").unwrap();
    assert!(action.contains("table = f2b-astrtc-phones\n") && action.contains("blocktype = drop\n"));
    let f2b = b.text("guard/fail2ban.d/astrtc.local").unwrap();
    assert!(f2b.contains("dbfile = /var/lib/fail2ban/fail2ban.sqlite3\n"));
    let compose: serde_json::Value = serde_yaml_ng::from_str(b.text("compose.yaml").unwrap()).unwrap();
    let g = &compose["services"]["guard"];
    assert_eq!(g["network_mode"], "host");
    assert_eq!(g["cap_drop"], serde_json::json!(["ALL"]));
    assert_eq!(g["cap_add"], serde_json::json!(["NET_ADMIN"]));
    assert_eq!(g["read_only"], true);
    assert_eq!(g["security_opt"], serde_json::json!(["no-new-privileges:true"]));
    assert!(g.get("privileged").is_none());
    assert_eq!(g["healthcheck"]["test"], serde_json::json!(["CMD", astrtc::image::GUARD_HEALTHCHECK]));
    let mounts: Vec<&str> = g["volumes"].as_array().unwrap().iter().map(|v| v["target"].as_str().unwrap()).collect();
    assert!(mounts.contains(&"/var/log/asterisk") && mounts.contains(&"/var/lib/fail2ban"));
    assert!(compose["volumes"].get("guard-db").is_some());

    // security.guard = false: no guard files, no service, the log stays in a tmpfs.
    let dir = fixture_copy("acme-http01");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    assert!(!b.files().keys().any(|p| p.starts_with("guard")));
    let compose: serde_json::Value = serde_yaml_ng::from_str(b.text("compose.yaml").unwrap()).unwrap();
    assert!(compose["services"].get("guard").is_none());
    assert!(compose["services"]["asterisk"]["tmpfs"].to_string().contains("/var/log/asterisk"));
}

/// With the bundled TURN relay on the host, a ban closes its listening ports too: the relay may
/// send to every UDP port of Asterisk's addresses, so a banned guesser holding TURN credentials
/// would otherwise go on through it. An external relay is not this host's to close.
#[test]
fn a_ban_closes_the_bundled_turn_ports_too_and_an_external_relay_is_not_deployed() {
    let dir = fixture_copy("turn-bundled");
    let spec = dir.path().join("astrtc.toml");
    let plan = plan_for(&spec, ROOT).unwrap();
    let b = bundle_for(&plan);
    let jail = b.text("guard/jail.d/astrtc.local").unwrap().to_string();
    assert!(jail.lines().any(|l| l == "port = 5060,8089,10000:19999,3478,443"), "{jail}");
    assert!(b.text("compose.yaml").unwrap().contains("\n  turn:\n"));
    let text = std::fs::read_to_string(&spec).unwrap();
    let external = text.replace("mode = \"bundled\"", "mode = \"external\"\nhost = \"turn.example.org\"");
    let external = external
        .lines()
        .filter(|l| !["relay_", "user_quota", "total_quota", "allowed_peers"].iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&spec, external).unwrap();
    let plan = plan_for(&spec, ROOT).unwrap();
    let b = bundle_for(&plan);
    let jail = b.text("guard/jail.d/astrtc.local").unwrap().to_string();
    assert!(jail.lines().any(|l| l == "port = 5060,8089,10000:19999"), "{jail}");
    // An external relay: astrtc deploys nothing of it (no turn/ files, no service, no workload).
    assert!(!b.files().keys().any(|p| p.starts_with("turn")), "turn/ rendered for an external relay");
    assert!(!b.text("compose.yaml").unwrap().contains("\n  turn:\n"));
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(b.text("helm/astrtc/values.yaml").unwrap()).unwrap();
    assert_eq!(values["turn"]["enabled"], serde_yaml_ng::Value::Bool(false));
}

/// What only a restart applies changes the compose service's restart digest (`apply` restarts);
/// a reloadable change keeps it. The opus complexity is the container's environment: a restart.
#[test]
fn the_restart_digest_moves_with_the_opus_complexity_not_with_the_dialplan() {
    let label = |edit: &dyn Fn(&str) -> String| {
        let dir = fixture_copy("webrtc-self-signed");
        let spec = dir.path().join("astrtc.toml");
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(&spec, edit(&text)).unwrap();
        let plan = plan_for(&spec, ROOT).unwrap();
        let compose = bundle_for(&plan).text("compose.yaml").unwrap().to_string();
        compose.lines().find(|l| l.contains("io.astrtc.restart-digest")).unwrap().trim().to_string()
    };
    let base = label(&|s| s.to_string());
    let dialplan = label(&|s| {
        assert!(s.contains("# echo_extension = \"600\""), "the fixture's echo extension line was not found");
        s.replace("# echo_extension = \"600\"", "echo_extension = \"601\"")
    });
    assert_eq!(base, dialplan, "a dialplan change is reloaded, not a restart");
    let complexity = label(&|s| {
        assert!(s.contains("\n[dialplan]\n"), "the fixture's [dialplan] section was not found");
        s.replace("\n[dialplan]\n", "\n[performance]\nopus_complexity = 2\n\n[dialplan]\n")
    });
    assert_ne!(base, complexity, "an opus complexity change must restart Asterisk");
}

/// A pool member added or removed moves none of the edge's, relay's, database's, pool watcher's or
/// members' restart digests (`apply` has compose scale the pool's service; the pool watcher has
/// the edge's dispatcher follow), though the service's `scale` changes; the probe interval
/// (kamailio.cfg) moves the edge's.
#[test]
fn the_pool_size_moves_no_cluster_service_digest_and_the_probe_interval_moves_the_edges() {
    let render = |edit: &dyn Fn(&str) -> String| {
        let dir = fixture_copy("cluster-compose");
        let spec = dir.path().join("astrtc.toml");
        let text = std::fs::read_to_string(&spec).unwrap();
        let edited = edit(&text);
        std::fs::write(&spec, edited).unwrap();
        let b = bundle_for(&plan_for(&spec, ROOT).unwrap());
        let compose = b.text("compose.yaml").unwrap().to_string();
        let mut labels = Vec::new();
        let mut service = "";
        for l in compose.lines() {
            if let Some(name) = l.strip_prefix("  ").and_then(|n| n.strip_suffix(':')).filter(|n| !n.starts_with(' ')) {
                service = name;
            }
            if let Some(d) = l.trim().strip_prefix("io.astrtc.restart-digest: ") {
                if ["edge", "relay", "db", "asterisk", "pool-watch"].contains(&service.trim_matches('"')) {
                    labels.push(format!("{service} {d}"));
                }
            }
        }
        let scale = compose.lines().find(|l| l.starts_with("    scale: ")).unwrap_or_default().to_string();
        assert_eq!(labels.len(), 5, "the database's, pool's, pool watcher's, relay's and edge's labels: {labels:?}");
        (labels, scale)
    };
    let (base, scale) = render(&|s| s.to_string());
    let (three, scale3) = render(&|s| {
        assert!(s.contains("pool_size = 2\n"), "the fixture's pool_size line was not found");
        s.replace("pool_size = 2\n", "pool_size = 3\n")
    });
    assert_eq!((scale.as_str(), scale3.as_str()), ("    scale: 2", "    scale: 3"));
    assert_eq!(base, three, "adding a pool member must restart none of the database, members, relay or edge");
    let (probe, _) = render(&|s| {
        assert!(s.contains("probe_seconds = 1\n"), "the fixture's probe_seconds line was not found");
        s.replace("probe_seconds = 1\n", "probe_seconds = 2\n")
    });
    let edge = base.iter().position(|l| l.starts_with("edge ")).unwrap();
    assert_ne!(base[edge], probe[edge], "a probe interval change must restart the edge: {base:?} {probe:?}");
    let others = |v: &[String]| v.iter().filter(|l| !l.starts_with("edge ")).cloned().collect::<Vec<_>>();
    assert_eq!(others(&base), others(&probe), "a probe interval change restarts only the edge");
}

/// A cluster's pool holds no user and no password: the edge authenticates users, and every call
/// reaches a member as the edge's endpoint. Neither a pool file compose mounts nor a file of the
/// chart's pool (its configs and Secret) carries an endpoint's password, and the pool's pjsip.conf
/// and dialplan name no user; the edge's endpoint is there. A user-only change leaves the pool's
/// files as they were (so `astrtc apply` reloads nothing there).
#[test]
fn a_clusters_pool_holds_no_user_and_no_password() {
    let dir = fixture_copy("cluster-compose");
    let spec = dir.path().join("astrtc.toml");
    let plan = plan_for(&spec, ROOT).unwrap();
    let b = bundle_for(&plan);
    assert!(plan.endpoints.len() >= 4, "the fixture has few endpoints");
    let pool_files: Vec<_> = b
        .files()
        .iter()
        .filter(|(p, _)| {
            ["asterisk", "helm/astrtc/files/asterisk", "helm/astrtc/files/secrets"].iter().any(|d| p.starts_with(d))
        })
        .collect();
    assert!(
        pool_files.iter().any(|(p, _)| p.starts_with("helm/astrtc/files/secrets/pjsip_auth.conf")),
        "the chart's copy of pjsip_auth.conf is not where this test looks"
    );
    assert!(pool_files.len() > 5, "no pool files: {:?}", b.files().keys().collect::<Vec<_>>());
    for (path, file) in &pool_files {
        let text = String::from_utf8_lossy(&file.bytes);
        for e in &plan.endpoints {
            assert!(!text.contains(e.password.expose()), "{} holds {}'s password", path.display(), e.id);
            assert!(!text.contains(&format!("[{}]", e.id)), "{} has a section for user {}", path.display(), e.id);
            assert!(!text.contains(&format!("PJSIP/{}", e.id)), "{} dials user {}", path.display(), e.id);
        }
    }
    let pjsip = b.text("asterisk/pjsip.conf").unwrap();
    assert!(pjsip.contains("[edge]\ntype = endpoint"), "the pool has no edge endpoint:\n{pjsip}");

    // 3003 added and 3002's password changed: no pool file changes.
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    let edited = text.replacen("[endpoints]\n", "[endpoints]\n3003 = \"render-sip-3003-password-xyz\"\n", 1);
    let old = &plan.endpoints.iter().find(|e| e.id == "3002").unwrap().password;
    let edited = edited.replacen(old.expose(), "render-sip-3002-password-new", 1);
    assert_eq!(edited.matches("render-sip-").count(), 2, "the secrets file was not edited: {edited}");
    std::fs::write(&secrets, edited).unwrap();
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}\n[[endpoints]]\nid = \"3003\"\nkind = \"sip\"\n")).unwrap();
    let after = bundle_for(&plan_for(&spec, ROOT).unwrap());
    for (path, file) in &pool_files {
        let now = after.files().get(*path).map(|f| &f.bytes);
        assert_eq!(now, Some(&file.bytes), "{} changed with a user change", path.display());
    }
}

/// The edge binds every address its entrypoint listed even if one has gone before Kamailio binds
/// it (`ip_free_bind`, in the global section: before the first module): otherwise a Docker network
/// or VPN taken down in that moment failed the bind and the edge exited. Kamailio's behaviour
/// itself was checked by hand in the edge image (a listen on an absent address: "Cannot assign
/// requested address", exit 255, without the line; started with it); only the line is tested here.
#[test]
fn the_edge_binds_an_address_that_went_away_while_it_started() {
    let dir = fixture_copy("cluster-compose");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let cfg = b.text("edge/kamailio.cfg").unwrap();
    let global = &cfg[..cfg.find("\nloadmodule ").expect("a loadmodule line")];
    assert_eq!(
        global.lines().filter(|l| l.trim() == "ip_free_bind=1").count(),
        1,
        "the edge's global section does not set ip_free_bind=1"
    );
}

/// The pool trusts the edge by a key, not by its address alone (which every process on the host
/// shares): the edge strips any `X-Astrtc-Edge` a client sends before anything else, adds its own
/// on each branch to the pool only, and strips it from replies; each member's dialplan checks it
/// first in every extension; the key is only in secret files (the chart: Secrets, never a
/// ConfigMap's copy). The cluster tests send the attacker's INVITE
/// (`cluster::security::in_dialog_requests_pass_only_for_the_edges_own_calls`).
#[test]
fn the_pool_takes_calls_only_with_the_edges_key_and_the_edge_strips_clients_copies() {
    use astrtc::render::FileKind;
    let dir = fixture_copy("cluster-compose");
    let plan = plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap();
    let b = bundle_for(&plan);
    let key = plan.cluster.as_ref().unwrap().edge_key.expose();
    assert!(key.len() >= 32, "the fixture's key is short");

    // The edge: the header removed as the first statement of the request route and from every
    // reply; added in the branch route only for a branch to the pool, which route[TOPOOL] marks.
    let cfg = b.text("edge/kamailio.cfg").unwrap();
    let block = |name: &str| -> String {
        let start = cfg.find(&format!("\n{name} {{")).unwrap_or_else(|| panic!("no {name} in kamailio.cfg"));
        let body = &cfg[start + 1..];
        body[..body.find("\n}\n").unwrap() + 2].to_string()
    };
    let statements = |block: &str| -> Vec<String> {
        block
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    assert_eq!(statements(&block("request_route"))[0], "remove_hf(\"X-Astrtc-Edge\");", "not first in request_route");
    assert_eq!(statements(&block("reply_route"))[0], "remove_hf(\"X-Astrtc-Edge\");", "replies keep the header");
    // Added in one block only: the key, then during a rotation (EDGE_KEY_PREVIOUS defined) the
    // previous key in a second header.
    let appends: Vec<_> = cfg.lines().filter(|l| l.contains("append_hf(\"X-Astrtc-Edge")).collect();
    assert_eq!(appends.len(), 2, "the header is added elsewhere too: {appends:?}");
    let branch = block("branch_route[MANAGE_BRANCH]");
    assert!(branch.contains("if ($avp(to_pool) == 1) {\n\t\t$var(edge_key) = EDGE_KEY;\n\t\tappend_hf(\"X-Astrtc-Edge: $var(edge_key)\\r\\n\");\n#!ifdef EDGE_KEY_PREVIOUS\n"), "{branch}");
    assert!(branch.contains("\t\t$var(edge_key) = EDGE_KEY_PREVIOUS;\n\t\tappend_hf(\"X-Astrtc-Edge: $var(edge_key)\\r\\n\");\n#!endif\n\t}\n"), "{branch}");
    let topool = block("route[TOPOOL]");
    assert!(topool.contains("$avp(to_pool) = 1;") && topool.contains("t_on_branch(\"MANAGE_BRANCH\");"), "{topool}");
    assert!(!block("route[TOUSER]").contains("to_pool"), "a user's branch is marked for the pool");
    assert!(cfg.contains("#!include_file \"/etc/astrtc-edge/edge_key.cfg\""), "kamailio.cfg does not include the key");

    // The pool: every extension of the context the edge lands in checks the key first.
    let ext = b.text("asterisk/extensions.conf").unwrap();
    assert!(ext.contains("[globals]\n; extensions_edge.conf (secret, mode 0640): the SHA-1 of the key the edge sends in X-Astrtc-Edge,\n"), "{ext}");
    assert!(ext.contains("\n#include extensions_edge.conf\n\n"), "{ext}");
    // The check compares the header's SHA-1 with the key's, held as a global of 40 hex digits.
    assert!(ext.contains("exten => s,1,GotoIf($[${LEN(${GLOBAL(ASTRTC_EDGE_KEY_SHA1)})} = 40 & \"${SHA1(${PJSIP_HEADER(read,X-Astrtc-Edge)})}\" = \"${GLOBAL(ASTRTC_EDGE_KEY_SHA1)}\"]?edge)\n"), "{ext}");
    let context = &ext[ext.find(&format!("\n[{}]\n", plan.dialplan.context)).unwrap()..];
    let firsts: Vec<_> = context.lines().filter(|l| l.starts_with("exten =>")).collect();
    assert!(!firsts.is_empty(), "no extension in {context}");
    // Nothing else in it reaches the dialplan around the check: no `include =>`, `switch =>` or
    // another context after it; only extensions, their steps, comments and blank lines.
    for line in context.lines().skip(2) {
        let t = line.trim_start();
        assert!(
            t.is_empty() || t.starts_with(';') || t.starts_with("exten =>") || t.starts_with("same =>"),
            "a line in the edge's context that is neither an extension nor one of its steps: {line:?}\n{context}"
        );
    }
    for line in firsts {
        assert!(line.ends_with(",1,Gosub(astrtc-edge-check,s,1(${EXTEN}))"), "an extension without the check: {line}");
    }
    // The previous key (a rotation under way) the same way, with its own global.
    assert!(ext.contains("\n same => n,GotoIf($[${LEN(${GLOBAL(ASTRTC_EDGE_KEY_PREVIOUS_SHA1)})} = 40 & \"${SHA1(${PJSIP_HEADER(read,X-Astrtc-Edge)})}\" = \"${GLOBAL(ASTRTC_EDGE_KEY_PREVIOUS_SHA1)}\"]?previous)\n"), "{ext}");
    // The edge's second header (its previous key, during a rotation) against the key: a member
    // that has not reloaded knows only that one.
    assert!(ext.contains("\n same => n,GotoIf($[${LEN(${GLOBAL(ASTRTC_EDGE_KEY_SHA1)})} = 40 & \"${SHA1(${PJSIP_HEADER(read,X-Astrtc-Edge,2)})}\" = \"${GLOBAL(ASTRTC_EDGE_KEY_SHA1)}\"]?previous)\n"), "{ext}");
    assert!(ext.contains(" same => n,Hangup(21)\n same => n(previous),Log(NOTICE,astrtc: a call to ${ARG1} came with the edge's previous key (a rotation under way))\n same => n(edge),Return()\n"), "{ext}");

    // The key: in the edge's secret files only, and in the chart's edge Secret only; each pool
    // member holds its SHA-1 (Python's hashlib.sha1 of the fixture's key), in secret files only.
    assert_eq!(key, "fixtureClusterEdgeKey0123456789abcdef", "the fixture's key changed: recompute its SHA-1");
    let sha1 = "eaf950c6dec0ba4f46447e522a19d89117468f59";
    assert_eq!(astrtc::render::cluster::edge_key_sha1(key), sha1);
    // Both globals always set (Asterisk keeps a global the file stops setting): the previous
    // one empty with no rotation under way.
    let globals: Vec<String> = b
        .text("asterisk/extensions_edge.conf")
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with(';'))
        .map(String::from)
        .collect();
    assert_eq!(globals, [format!("ASTRTC_EDGE_KEY_SHA1 = {sha1}"), "ASTRTC_EDGE_KEY_PREVIOUS_SHA1 = ".to_string()]);
    let hash_holders: Vec<String> = b
        .files()
        .iter()
        .filter(|(_, f)| String::from_utf8_lossy(&f.bytes).contains(sha1))
        .map(|(p, f)| {
            assert_eq!(f.kind, FileKind::Secret, "{} holds the SHA-1 of the edge's key", p.display());
            p.display().to_string()
        })
        .collect();
    assert_eq!(hash_holders, ["asterisk/extensions_edge.conf", "helm/astrtc/files/secrets/extensions_edge.conf"]);
    let holders: Vec<String> = b
        .files()
        .iter()
        .filter(|(_, f)| String::from_utf8_lossy(&f.bytes).contains(key))
        .map(|(p, f)| {
            assert_eq!(f.kind, FileKind::Secret, "{} holds the edge's key", p.display());
            p.display().to_string()
        })
        .collect();
    assert_eq!(holders, ["edge/edge_key.cfg", "helm/astrtc/files/edge-secret/edge_key.cfg"]);
    let defines = |b: &astrtc::render::Bundle| -> Vec<String> {
        b.text("edge/edge_key.cfg").unwrap().lines().filter(|l| !l.starts_with("# ")).map(String::from).collect()
    };
    assert_eq!(defines(&b), [format!("#!define EDGE_KEY \"{key}\"")]);

    // A rotation under way: the pool holds the previous key's SHA-1 (hashlib again) beside the
    // new key's, in its secret files only; the edge holds the previous key too (it sends both),
    // in its secret files only.
    let previous = "fixturePreviousEdgeKey0123456789abcd";
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(&secrets, text.replace("edge_key = ", &format!("edge_key_previous = \"{previous}\"\nedge_key = ")))
        .unwrap();
    let rotating = bundle_for(&plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap());
    let previous_sha1 = "f4b49476db86f4383d8abc364ecec89314cc4ed6";
    assert_eq!(astrtc::render::cluster::edge_key_sha1(previous), previous_sha1);
    let edge_conf = rotating.text("asterisk/extensions_edge.conf").unwrap();
    assert!(edge_conf.ends_with(&format!("ASTRTC_EDGE_KEY_PREVIOUS_SHA1 = {previous_sha1}\n")), "{edge_conf}");
    for (p, f) in rotating.files() {
        let text = String::from_utf8_lossy(&f.bytes);
        if text.contains(previous) {
            assert!(
                ["edge/edge_key.cfg", "helm/astrtc/files/edge-secret/edge_key.cfg"].contains(&p.to_str().unwrap()),
                "{} holds the previous key",
                p.display()
            );
            assert_eq!(f.kind, FileKind::Secret, "{} holds the previous key", p.display());
        }
        if text.contains(previous_sha1) {
            assert_eq!(f.kind, FileKind::Secret, "{} holds the previous key's SHA-1", p.display());
        }
    }
    assert_eq!(
        defines(&rotating),
        [format!("#!define EDGE_KEY \"{key}\""), format!("#!define EDGE_KEY_PREVIOUS \"{previous}\"")]
    );
    // The previous key is out of the edge's restart view (finishing a rotation restarts no edge);
    // the key is in it (a rotation restarts the edge, which reads it once).
    let edge_label = |b: &astrtc::render::Bundle| -> String {
        let compose = b.text("compose.yaml").unwrap();
        let edge = compose.split("\n  edge:\n").nth(1).expect("an edge service");
        edge.lines().find_map(|l| l.trim().strip_prefix("io.astrtc.restart-digest: ")).unwrap().to_string()
    };
    assert_eq!(edge_label(&rotating), edge_label(&b), "the previous key's define restarts the edge");
    // The edge's container is labelled with which key it sends (what `apply` compares a new key
    // with): a fingerprint of its own, not the pool's SHA-1 (which is in secret files only, above).
    let print = astrtc::render::cluster::edge_key_fingerprint(key);
    assert_eq!(print.len(), 64);
    assert!(b.text("compose.yaml").unwrap().contains(&format!("\n      io.astrtc.edge-key: \"{print}\"\n")));
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(&secrets, text.replace(key, "fixtureAnotherEdgeKey0123456789abcd")).unwrap();
    let rekeyed = bundle_for(&plan_for(&dir.path().join("astrtc.toml"), ROOT).unwrap());
    assert_ne!(edge_label(&rekeyed), edge_label(&rotating), "a new key does not restart the edge");
    let configmap = b.text("helm/astrtc/templates/edge-configmap.yaml").unwrap();
    assert!(
        configmap.contains("kind: Secret\nmetadata:\n  name: {{ include \"astrtc.fullname\" . }}-edge-key"),
        "{configmap}"
    );
}

/// A cluster's chart carries a README that draws its topology from the spec (a Mermaid
/// flowchart): the edge's ports, the probe interval, the relay's media ports and control port,
/// the pool's size; a single deployment's chart keeps its own README.
#[test]
fn the_cluster_chart_readme_draws_the_topology_from_the_spec() {
    let dir = fixture_copy("cluster-compose");
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    assert!(text.contains("pool_size = 2\n"), "the fixture's pool_size line was not found");
    std::fs::write(&spec, text.replace("pool_size = 2\n", "pool_size = 5\n")).unwrap();
    let plan = plan_for(&spec, ROOT).unwrap();
    let b = bundle_for(&plan);
    let readme = b.text("helm/astrtc/README.md").expect("the cluster chart has no README.md");
    let mermaid = readme.split("```mermaid\n").nth(1).and_then(|r| r.split("\n```").next()).expect("no mermaid block");
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    let c = plan.cluster.as_ref().unwrap();
    for want in [
        format!("WSS :{}", plan.network.wss_port),
        format!("UDP :{}", plan.network.sip_port),
        format!("TLS :{}", plan.network.sip_tls_port),
        format!("probes every {} s", c.probe_seconds),
        format!("media ports {}-{}", plan.rtp.start, plan.rtp.end),
        format!("ng control :{}", c.relay_control_port),
        "Asterisk × 5".to_string(),
    ] {
        assert!(mermaid.contains(&want), "the chart's topology lacks {want:?}:\n{mermaid}");
    }
    let single = bundle_for(&plan_for(&fixture_copy("webrtc-self-signed").path().join("astrtc.toml"), ROOT).unwrap());
    let single = single.text("helm/astrtc/README.md").unwrap_or_default();
    assert!(!single.contains("StatefulSet pool"), "a single deployment's chart has the cluster's README");
}
