//! Several AM partitions as one system: real `acct serve` processes on
//! 127.0.0.1 sharing one cluster map.

use peer::net::UserClient;
use peer::quic::{AmClient, ClientError};
use wire::{AccountingKind, AckStatus, Address, ErrorCode, Name, PartitionId, Role, ServiceId, Usage};

use acct_tests::{TestPki, credential_request, hot_records_on, now_ms, open_policy, runtime, send_all, wait_until};

/// Requests and accounting sent to a partition that is not the provider's
/// home, or not the session's, are answered with the right partition and
/// nothing is stored there; the same request at the home is served.
#[test]
fn wrong_node_traffic_is_redirected_and_nothing_is_stored_there() {
    let pki = TestPki::new(4, 1);
    let cluster = pki.start_cluster(3, &["--no-export"]);
    // provider-0001's home among am-1, am-2, am-3 (docs/protocol.md 6.1).
    let home = cluster.home("provider-0001").clone();
    assert_eq!(home.name.as_str(), "am-1");
    let wrong = cluster.map.by_id(PartitionId(2)).unwrap().clone();
    let open = || wire::AdminOpenSession {
        provider: Name::new("provider-0001").unwrap(),
        service_id: ServiceId(1),
        user_id: Name::new("user-0001").unwrap(),
        user_address: Address::new("127.0.0.1:5000").unwrap(),
        policy: open_policy(now_ms()),
    };
    runtime().block_on(async {
        // The operator asks the wrong partition: redirected to the home.
        let admin = AmClient::connect(
            cluster.node(wrong.id.0).address,
            &pki.identity(Role::AccountingManager, wrong.name.as_str()),
        )
        .await
        .unwrap();
        match admin.open_session(&open()).await {
            Err(ClientError::Redirect(redirect)) => {
                assert_eq!(redirect, wire::Redirect::to(&home));
            }
            other => panic!("expected a redirect, got {other:?}"),
        }
        admin.close().await;

        // At the home: a session whose id names the home.
        let admin = AmClient::connect(
            cluster.node(home.id.0).address,
            &pki.identity(Role::AccountingManager, home.name.as_str()),
        )
        .await
        .unwrap();
        let credential = admin.open_session(&open()).await.unwrap();
        admin.close().await;
        assert_eq!(credential.value().session_id.partition(), home.id);
        let home_key = pki
            .identity(Role::AccountingManager, home.name.as_str())
            .signing_key
            .public_key();
        let provider = pki.identity(Role::Provider, "provider-0001");
        let mut session =
            peer::provider::ProviderSession::accept(credential, &home_key, provider.signing_key.clone()).unwrap();
        let now = now_ms();
        let messages: Vec<_> = (1..=3)
            .map(|units| {
                session
                    .account(
                        AccountingKind::INTERIM,
                        Usage {
                            units: Some(units),
                            interval_ms: Some((now - 1000, now)),
                            ..Usage::default()
                        },
                    )
                    .unwrap()
            })
            .collect();

        // Accounting for the home's session sent to the wrong partition.
        let client = AmClient::connect(cluster.node(wrong.id.0).address, &provider)
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert!(
            answers.values().all(|status| *status == AckStatus::WRONG_PARTITION),
            "{answers:?}"
        );
        // The same bytes at the home: stored.
        let client = AmClient::connect(cluster.node(home.id.0).address, &provider)
            .await
            .unwrap();
        let answers = send_all(&client, &messages).await;
        client.close().await;
        assert!(
            answers.values().all(|status| *status == AckStatus::STORED),
            "{answers:?}"
        );

        // A user asks the wrong partition for service 1 (provider-0001's):
        // redirected; the same bytes at the home go through its checks.
        let request = credential_request(&pki, 1);
        let client = UserClient::connect(cluster.node(wrong.id.0).address, &pki.ca_der())
            .await
            .unwrap();
        match client.request_credential(&request).await {
            Err(ClientError::Redirect(redirect)) => assert_eq!(redirect, wire::Redirect::to(&home)),
            other => panic!("expected a redirect, got {other:?}"),
        }
        client.close().await;
        let client = UserClient::connect(cluster.node(home.id.0).address, &pki.ca_der())
            .await
            .unwrap();
        match client.request_credential(&request).await {
            // provider-0001 has no provider node connected in this test.
            Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::PROVIDER_UNAVAILABLE, "{error:?}"),
            other => panic!("expected PROVIDER_UNAVAILABLE at the home, got {other:?}"),
        }
        client.close().await;
    });
    assert_eq!(
        hot_records_on(&pki, cluster.node(wrong.id.0), wrong.name.as_str()),
        0,
        "nothing is stored on the wrong partition"
    );
    assert_eq!(
        hot_records_on(&pki, cluster.node(home.id.0), home.name.as_str()),
        3,
        "the home stored the three messages"
    );
}

/// Three partitions, the S3 server and loadgen spreading 1,000 providers by
/// the placement: partition 2 is SIGKILLed in the middle of the load and
/// restarted from its data directory. loadgen's audit over every partition's
/// hot store and the bucket: nothing lost, nothing doubled; each
/// partition's providers and sessions are the placement's. The other two
/// partitions' throughput while partition 2 is down, against before, is
/// printed (a figure, not asserted: docs/performance.md).
#[test]
fn three_partitions_carry_the_load_and_one_killed_partition_recovers() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};

    use acct_tests::free_udp_port;
    use acct_tests::s3::{S3Server, storage_on_bucket};

    const PROVIDERS: usize = 1000;
    const SESSIONS: usize = 2000;
    const RATE: u64 = 1500;
    const DURATION_S: u64 = 24;
    const KILL_AT_S: u64 = 8;
    const DOWN_S: u64 = 5;

    let s3 = S3Server::start();
    let pki = TestPki::new(0, 0);
    let storage_address = std::net::SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let storage = storage_on_bucket(&pki, &s3, "cluster", storage_address, &[], &[]);
    let mut cluster = pki.start_cluster(
        3,
        &[
            "--storage",
            &storage_address.to_string(),
            "--export-interval-ms",
            "1000",
        ],
    );
    let map_file = pki.data().join("cluster.toml");
    std::fs::write(&map_file, &cluster.section).unwrap();
    let report_path = pki.data().join("cluster-report.json");
    let cold = s3.objects("cluster");
    let mut loadgen = std::process::Command::new(acct_tests::binary("loadgen"))
        .arg("--cluster")
        .arg(&map_file)
        .arg("--pki")
        .arg(pki.pki())
        .args([
            "--providers",
            &PROVIDERS.to_string(),
            "--sessions",
            &SESSIONS.to_string(),
        ])
        .args([
            "--users",
            "50",
            "--rate",
            &RATE.to_string(),
            "--duration",
            &DURATION_S.to_string(),
        ])
        .args(["--drain", "60", "--seed", "29", "--audit"])
        .arg("--cold")
        .arg(&cold)
        .arg("--json")
        .arg(&report_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The timed phase starts when loadgen says it is sending.
    let stderr = loadgen.stderr.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let sending_at = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("loadgen never started sending");
        if line.contains("sending for") {
            break Instant::now();
        }
    };
    std::thread::sleep((sending_at + Duration::from_secs(KILL_AT_S)).saturating_duration_since(Instant::now()));
    cluster.kill(2);
    let killed_at = sending_at.elapsed();
    std::thread::sleep(Duration::from_secs(DOWN_S));
    // Partition 2 cannot ack before its process starts again.
    let restarted_at = sending_at.elapsed();
    cluster.restart(2);
    // Bounded: loadgen's own duration, drain and audit, then it is killed.
    let finished = wait_until(Duration::from_secs(DURATION_S + 60 + 240), || {
        loadgen.try_wait().unwrap().is_some()
    });
    if !finished {
        let _ = loadgen.kill();
        panic!("loadgen did not finish in time");
    }
    let output = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        output.status.success(),
        "loadgen failed:\n{stdout}\n{}",
        rest.join("\n")
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let number = |value: &serde_json::Value| value.as_u64().unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(number(&report["lost"]), 0, "{stdout}");
    assert_eq!(number(&report["double_stored"]), 0, "{stdout}");
    assert_eq!(number(&report["unanswered"]), 0, "{stdout}");
    let stored = number(&report["acked_stored"]);
    // Every message acked as stored (STORED, or DUPLICATE for one the
    // killed partition stored but whose ack was lost with it) is stored
    // once; the STORED acks are all of them but those duplicates.
    let acked_as_stored = number(&report["audit"]["acked_as_stored"]);
    assert_eq!(number(&report["audit"]["stored_once"]), acked_as_stored, "{stdout}");
    assert!(
        stored <= acked_as_stored && acked_as_stored - stored <= number(&report["acked_duplicate"]),
        "{stdout}"
    );

    // Each partition's providers and sessions are the placement's.
    let mut providers = [0u64; 3];
    let mut sessions = [0u64; 3];
    for index in 0..PROVIDERS {
        let name = Name::new(format!("provider-{:04}", index + 1)).unwrap();
        providers[usize::from(cluster.map.home(&name).id.0) - 1] += 1;
    }
    for index in 0..SESSIONS {
        let name = Name::new(format!("provider-{:04}", index % PROVIDERS + 1)).unwrap();
        sessions[usize::from(cluster.map.home(&name).id.0) - 1] += 1;
    }
    let partitions = report["partitions"].as_array().unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(partitions.len(), 3);
    let mut stored_sum = 0;
    for (index, partition) in partitions.iter().enumerate() {
        assert_eq!(number(&partition["providers"]), providers[index], "{partition}");
        assert_eq!(number(&partition["sessions"]), sessions[index], "{partition}");
        assert!(number(&partition["acked_stored"]) > 0, "{partition}");
        stored_sum += number(&partition["acked_stored"]);
    }
    // Each partition counts the answers that settled a message as stored
    // (STORED, or DUPLICATE after the killed partition lost an ack), the
    // total only the STORED ones.
    let duplicates = number(&report["acked_duplicate"]);
    assert!(
        stored <= stored_sum && stored_sum - stored <= duplicates,
        "partitions {stored_sum}, STORED {stored}, DUPLICATE {duplicates}"
    );

    // The figure: stored acks per second of partitions 1 and 3 while 2 was
    // down, against the seconds before the kill (the first two left out:
    // the load ramps up).
    let rate = |partition: &serde_json::Value, from: u64, to: u64| {
        let seconds: Vec<u64> = partition["acked_per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|count| count.as_u64().unwrap())
            .collect();
        let window = &seconds[(from as usize).min(seconds.len())..(to as usize).min(seconds.len())];
        window.iter().sum::<u64>() as f64 / window.len().max(1) as f64
    };
    let (down_from, down_to) = (killed_at.as_secs() + 1, restarted_at.as_secs());
    assert_eq!(
        rate(&partitions[1], down_from, down_to),
        0.0,
        "partition 2 acked while it was killed"
    );
    let mut figures = Vec::new();
    for partition in [&partitions[0], &partitions[2]] {
        let before = rate(partition, 2, KILL_AT_S);
        let during = rate(partition, down_from, down_to);
        figures.push(format!(
            "{}: {before:.0}/s before, {during:.0}/s while partition 2 was down ({:.2})",
            partition["name"],
            during / before.max(1.0)
        ));
    }
    println!("figure: {}", figures.join("; "));
    for node in 1..=3u16 {
        cluster.kill(node);
    }
    assert!(storage.terminate(Duration::from_secs(30)));
}

/// The peer library among partitions: a `ProviderNode` given the cluster
/// map connects to its home; a user asks another partition for a
/// credential, follows the redirect, and the home pushes the credential to
/// the node, which accounts there: stored on the home, nothing elsewhere.
#[test]
fn the_peer_library_follows_the_map() {
    use std::collections::HashMap;
    use std::time::Duration;

    use peer::node::ProviderNode;

    let pki = TestPki::new(1, 1);
    let cluster = pki.start_cluster(3, &["--no-export"]);
    let provider_name = Name::new("provider-0001").unwrap();
    let home = cluster.map.home(&provider_name).clone();
    let other = cluster
        .map
        .partitions()
        .iter()
        .find(|partition| partition.id != home.id)
        .unwrap()
        .clone();
    let keys: HashMap<PartitionId, wire::PublicKey> = cluster
        .map
        .partitions()
        .iter()
        .map(|partition| {
            (
                partition.id,
                pki.identity(Role::AccountingManager, partition.name.as_str())
                    .signing_key
                    .public_key(),
            )
        })
        .collect();
    runtime().block_on(async {
        let node = ProviderNode::start_in_cluster(
            &cluster.map,
            &keys,
            pki.identity(Role::Provider, "provider-0001"),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        .unwrap();
        let request = credential_request(&pki, 1);
        let (credential, redirect) =
            UserClient::request_credential_in_cluster(other.address.as_str(), &pki.ca_der(), &request)
                .await
                .unwrap();
        assert_eq!(redirect, Some(wire::Redirect::to(&home)));
        peer::user::check_credential(&credential, request.value().request_id, &keys[&home.id]).unwrap();
        let session = credential.value().session_id;
        assert_eq!(session.partition(), home.id);
        assert_eq!(node.next_credential(Duration::from_secs(10)).await, Some(session));
        for units in 1..=4 {
            node.account(
                session,
                AccountingKind::INTERIM,
                Usage {
                    units: Some(units),
                    ..Usage::default()
                },
            )
            .unwrap();
        }
        let delivery = node.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (4, 0), "{delivery:?}");
        node.stop().await;
    });
    assert_eq!(hot_records_on(&pki, cluster.node(home.id.0), home.name.as_str()), 4);
    assert_eq!(hot_records_on(&pki, cluster.node(other.id.0), other.name.as_str()), 0);
}

/// A map whose addresses are swapped (a stale DNS record, a Service
/// pointing at the wrong pod): the provider reaching "its home" finds
/// another partition's certificate there and refuses to use it.
#[test]
fn a_partition_at_the_wrong_address_is_refused() {
    use std::collections::HashMap;

    use peer::node::ProviderNode;

    let pki = TestPki::new(1, 0);
    let cluster = pki.start_cluster(2, &["--no-export"]);
    let partitions = cluster.map.partitions();
    let swapped = wire::ClusterMap::new(vec![
        wire::Partition {
            address: partitions[1].address.clone(),
            ..partitions[0].clone()
        },
        wire::Partition {
            address: partitions[0].address.clone(),
            ..partitions[1].clone()
        },
    ])
    .unwrap();
    let keys: HashMap<PartitionId, wire::PublicKey> = partitions
        .iter()
        .map(|partition| {
            let identity = pki.identity(Role::AccountingManager, partition.name.as_str());
            (partition.id, identity.signing_key.public_key())
        })
        .collect();
    let home = swapped.home(&Name::new("provider-0001").unwrap()).clone();
    runtime().block_on(async {
        match ProviderNode::start_in_cluster(
            &swapped,
            &keys,
            pki.identity(Role::Provider, "provider-0001"),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        {
            Err(ClientError::Connect(detail)) => {
                assert!(detail.contains(&format!("not {}", home.name)), "{detail}");
            }
            Err(other) => panic!("expected a refused name, got {other:?}"),
            Ok(_) => panic!("the provider used a partition that is not the one the map names"),
        }
    });
}

/// A fourth partition joins: provider-0003's home moves from am-1 to am-4
/// (docs/protocol.md 6.1). Its `ProviderNode` takes the new map: new
/// sessions come from am-4, while the session am-1 minted before keeps
/// its accounting on am-1 (no state moves).
#[test]
fn a_moved_provider_keeps_its_old_sessions_where_they_were_minted() {
    use std::collections::HashMap;
    use std::time::Duration;

    use peer::node::ProviderNode;

    let pki = TestPki::new(3, 1);
    let mut cluster = pki.start_cluster(3, &["--no-export"]);
    let am4_address = std::net::SocketAddr::from(([127, 0, 0, 1], acct_tests::free_udp_port()));
    let section4 = format!(
        "{}[[cluster.partitions]]\nid = 4\nname = \"am-4\"\naddress = \"{am4_address}\"\n",
        cluster.section
    );
    let am4_folder = tempfile::tempdir().unwrap();
    let am4_config = pki.node_config("am-4", &am4_address.to_string(), am4_folder.path(), &section4);
    let am4 = acct_tests::AmProcess::spawn(
        &[
            "serve".into(),
            "--config".into(),
            am4_config.into(),
            "--no-export".into(),
        ],
        &[],
        "acct serve: listening on ",
    );
    let mut partitions4 = cluster.map.partitions().to_vec();
    partitions4.push(wire::Partition {
        id: PartitionId(4),
        name: Name::new("am-4").unwrap(),
        address: Address::new(am4_address.to_string()).unwrap(),
    });
    let map4 = wire::ClusterMap::new(partitions4).unwrap();
    let provider = Name::new("provider-0003").unwrap();
    assert_eq!(cluster.map.home(&provider).name.as_str(), "am-1");
    assert_eq!(map4.home(&provider).name.as_str(), "am-4");
    let keys: HashMap<PartitionId, wire::PublicKey> = map4
        .partitions()
        .iter()
        .map(|partition| {
            let identity = pki.identity(Role::AccountingManager, partition.name.as_str());
            (partition.id, identity.signing_key.public_key())
        })
        .collect();
    let request = |service: u32| credential_request(&pki, service);
    let usage = |units| Usage {
        units: Some(units),
        ..Usage::default()
    };
    let rt = runtime();
    let (node, old, new) = rt.block_on(async {
        let node = ProviderNode::start_in_cluster(
            &cluster.map,
            &keys,
            pki.identity(Role::Provider, "provider-0003"),
            ([127, 0, 0, 1], 0).into(),
        )
        .await
        .unwrap();
        // Service 3 is provider-0003's; am-1 is its home under the old map.
        let (old, _) =
            UserClient::request_credential_in_cluster(&cluster.node(1).address.to_string(), &pki.ca_der(), &request(3))
                .await
                .unwrap();
        let old = old.value().session_id;
        assert_eq!(old.partition(), PartitionId(1));
        assert_eq!(node.next_credential(Duration::from_secs(10)).await, Some(old));
        for units in 1..=2 {
            node.account(old, AccountingKind::INTERIM, usage(units)).unwrap();
        }
        assert_eq!(node.deliver(Duration::from_secs(30)).await.unwrap().stored, 2);

        // The new map: the home is am-4 now.
        node.set_map(&map4, &keys).await.unwrap();
        let (new, redirect) =
            UserClient::request_credential_in_cluster(&am4_address.to_string(), &pki.ca_der(), &request(3))
                .await
                .unwrap();
        assert_eq!(redirect, None);
        let new = new.value().session_id;
        assert_eq!(new.partition(), PartitionId(4));
        assert_eq!(node.next_credential(Duration::from_secs(10)).await, Some(new));
        node.account(old, AccountingKind::INTERIM, usage(3)).unwrap();
        for units in 1..=2 {
            node.account(new, AccountingKind::INTERIM, usage(units)).unwrap();
        }
        let delivery = node.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (3, 0), "{delivery:?}");
        assert_eq!(
            node.connected_partitions().await,
            vec![PartitionId(1), PartitionId(4)],
            "the old session on am-1 is still open"
        );
        (node, old, new)
    });

    // am-1 goes down: the new home still takes its session's accounting at
    // once; the old session's waits (a bounded delivery, not held back).
    cluster.kill(1);
    rt.block_on(async {
        node.account(old, AccountingKind::INTERIM, usage(4)).unwrap();
        node.account(new, AccountingKind::INTERIM, usage(3)).unwrap();
        let delivery = node.deliver(Duration::from_secs(3)).await.unwrap();
        // (am-1's connection may still look open: its message is just
        // unanswered, or am-1 is unreached; either way it stays pending.)
        assert_eq!((delivery.stored, delivery.pending), (1, 1), "{delivery:?}");
    });
    cluster.restart(1);
    // The message am-1 missed goes by itself once it is back: the node's
    // background sender (on the runtime's workers) tries again after each
    // backoff; the connection from before the restart breaks on its first
    // packets, a stateless reset, and the flight connects again.
    assert!(
        wait_until(Duration::from_secs(60), || node.unacked_count() == 0),
        "am-1's message was not sent again by itself"
    );
    rt.block_on(async {
        // The old session ends on am-1, back from its data directory.
        node.account(old, AccountingKind::FINAL, usage(5)).unwrap();
        let delivery = node.deliver(Duration::from_secs(30)).await.unwrap();
        assert_eq!((delivery.stored, delivery.pending), (2, 0), "{delivery:?}");
        // am-1 is the previous home: kept until the next map.
        assert_eq!(node.connected_partitions().await, vec![PartitionId(1), PartitionId(4)]);
        // The same map again: no previous home now, and no open session
        // on am-1: its connection is let go.
        node.set_map(&map4, &keys).await.unwrap();
        node.deliver(Duration::from_secs(5)).await.unwrap();
        assert_eq!(node.connected_partitions().await, vec![PartitionId(4)]);
        node.stop().await;
    });
    assert_eq!(
        hot_records_on(&pki, cluster.node(1), "am-1"),
        5,
        "the old session stays on am-1"
    );
    assert_eq!(hot_records_on(&pki, &am4, "am-4"), 3, "the new session is am-4's");
    assert_eq!(hot_records_on(&pki, cluster.node(2), "am-2"), 0);
    assert_eq!(hot_records_on(&pki, cluster.node(3), "am-3"), 0);
}
