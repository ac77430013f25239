//! Faults around the archive on an S3-compatible bucket, each with its
//! figure: the object store down for minutes, the object store killed in
//! the middle of a multipart upload, the storage killed between the store's
//! confirmation and its ack, and two storages given one batch at once. A
//! real S3-protocol server (`s3s-fs`) on 127.0.0.1, real `acct storage` and
//! `acct serve` processes.
//!
//! Run with `--nocapture` to see the figures (lines starting `figure:`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use acct_tests::s3::{
    S3Server, ingest, object_names, send_record, storage_on_bucket, synthetic_batch, synthetic_batch_with_id,
};
use acct_tests::{
    AmProcess, TestPki, cold_ids_once, free_tcp_port, free_udp_port, hot_records, http_get, runtime, sent_ids,
    wait_until,
};
use wire::{RecordStatus, Role, Signed};

/// Upper bound on waiting for an export to land when nothing is down.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the object store stays down in the outage test.
const OUTAGE: Duration = Duration::from_secs(120);
/// Messages ingested per wave during the outage, and the waves.
const WAVE_MESSAGES: u64 = 100;
const OUTAGE_WAVES: u32 = 6;
/// Upper bound on the catch-up after the outage: the storage answers
/// UNAVAILABLE once its retries of a request run out, and the AM sends the
/// batch again after its backoff (at most 5 s); a request in flight when
/// the store comes back may take up to the storage's 100 s retry deadline.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// The part size the multipart tests use (S3's minimum), in MiB.
const PART_MIB: &str = "5";

fn address() -> SocketAddr {
    ([127, 0, 0, 1], free_udp_port()).into()
}

/// The value of an AM metric without labels, 0 when absent.
fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn stored_class(status: RecordStatus) -> bool {
    status == RecordStatus::STORED || status == RecordStatus::ALREADY_STORED
}

/// The object store is down for minutes: ingest goes on (every message
/// STORED), the AM's export backlog grows, and once the store is back the
/// export catches up with nothing lost or doubled.
#[test]
fn an_object_store_down_for_minutes_delays_the_export_and_loses_nothing() {
    let mut s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address = address();
    let storage = storage_on_bucket(&pki, &s3, "outage", storage_address, &[], &[]);
    let metrics_port = free_tcp_port();
    let am = AmProcess::start(
        pki.data(),
        &[
            "--storage",
            &storage_address.to_string(),
            "--export-interval-ms",
            "500",
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let objects = s3.objects("outage");
    let mut messages = ingest(&pki, &am, 2, WAVE_MESSAGES);
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_ids_once(&objects).len() == messages.len()),
        "the first export did not land"
    );

    s3.kill();
    let down = Instant::now();
    let mut backlog = Vec::new();
    for wave in 0..OUTAGE_WAVES {
        let due = OUTAGE * wave / OUTAGE_WAVES;
        std::thread::sleep(due.saturating_sub(down.elapsed()));
        messages.extend(ingest(&pki, &am, 1, WAVE_MESSAGES));
        // The exporter counts this wave in its backlog (it cannot ship it).
        let waiting = (u64::from(wave + 1) * WAVE_MESSAGES) as f64;
        assert!(
            wait_until(EXPORT_TIMEOUT, || metric(metrics_port, "acct_export_backlog_records")
                >= waiting),
            "the backlog never counted wave {wave}"
        );
        backlog.push(metric(metrics_port, "acct_export_backlog_records"));
    }
    std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
    let outage = down.elapsed();
    let peak = metric(metrics_port, "acct_export_backlog_records");
    let exported_before = (2 * WAVE_MESSAGES) as usize;
    assert!(
        backlog.windows(2).all(|pair| pair[1] >= pair[0]) && peak >= (OUTAGE_WAVES as u64 * WAVE_MESSAGES) as f64,
        "the backlog did not grow with the waves: {backlog:?}, at the end {peak}"
    );
    assert_eq!(
        cold_ids_once(&objects).len(),
        exported_before,
        "nothing reaches the bucket while the store is down"
    );
    assert_eq!(
        hot_records(&pki, &am),
        (messages.len() - exported_before) as u64,
        "the AM keeps what it could not export"
    );

    s3.restart();
    let back = Instant::now();
    assert!(
        wait_until(CATCH_UP_TIMEOUT, || cold_ids_once(&objects).len() == messages.len()),
        "the export did not catch up after the store came back"
    );
    let caught_up = back.elapsed();
    assert!(
        wait_until(EXPORT_TIMEOUT, || metric(metrics_port, "acct_export_backlog_records")
            == 0.0),
        "the backlog metric did not return to 0"
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    assert_eq!(cold_ids_once(&objects), sent_ids(&messages), "lost or doubled");
    let names = object_names(&objects);
    assert_eq!(names.len(), names.iter().collect::<HashSet<_>>().len());
    println!(
        "figure: object store down {:.0} s; {} messages ingested meanwhile, all STORED; export backlog peak {peak:.0} \
         records; caught up {:.1} s after the store came back",
        outage.as_secs_f64(),
        messages.len() - exported_before,
        caught_up.as_secs_f64()
    );
}

/// The object store is SIGKILLed after the first part of a multipart
/// upload: no object is visible while it is down, and once it is back the
/// storage finishes (or fails and is asked again): one object with the
/// batch's bytes, and no upload left behind.
#[test]
fn the_object_store_killed_mid_multipart_upload_leaves_no_object_and_the_batch_lands_once() {
    let mut s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address = address();
    // 3 s between parts: the store is killed while the storage waits
    // before the second part.
    let storage = storage_on_bucket(
        &pki,
        &s3,
        "multipart",
        storage_address,
        &["--part-mib", PART_MIB],
        &[("ACCT_STORAGE_PART_DELAY_MS", "3000")],
    );
    let batch = synthetic_batch(&pki, 16_000, 1024);
    let bytes = batch.value().payload.len();
    assert!(
        bytes > 3 * 5 * 1024 * 1024,
        "a batch of {bytes} bytes is not three parts"
    );
    let identity = pki.identity(Role::AccountingManager, "am-1");
    let rt = runtime();
    let sending = {
        let (identity, batch) = (identity.clone(), batch.clone());
        rt.spawn(async move { send_record(storage_address, &identity, &batch).await })
    };
    let part_one = |s3: &S3Server| s3.upload_files().iter().any(|name| name.ends_with(".part-1"));
    assert!(
        wait_until(EXPORT_TIMEOUT, || part_one(&s3)),
        "the first part never reached the store"
    );
    s3.kill();
    let killed = Instant::now();
    let objects = s3.objects("multipart");
    assert!(
        object_names(&objects).is_empty(),
        "an object is visible while its upload is unfinished"
    );
    let uploads_at_kill: HashSet<String> = s3
        .upload_files()
        .iter()
        .filter_map(|name| name.strip_prefix(".upload_id-")?.get(..36).map(str::to_owned))
        .collect();
    assert_eq!(
        uploads_at_kill.len(),
        1,
        "the upload was not in the middle when the store died"
    );
    std::thread::sleep(Duration::from_secs(5));
    s3.restart();
    let mut answer = rt.block_on(sending).unwrap();
    let mut attempts = 1;
    // UNAVAILABLE (the store's retries ran out, or it lost the upload): the
    // AM sends the batch again; so does this test, a bounded number of times.
    while matches!(&answer, Ok(ack) if ack.status == RecordStatus::UNAVAILABLE) && attempts < 3 {
        attempts += 1;
        answer = rt.block_on(send_record(storage_address, &identity, &batch));
    }
    let landed = killed.elapsed();
    let ack = answer.unwrap_or_else(|error| panic!("no answer from the storage: {error}"));
    assert!(stored_class(ack.status), "answered {:?}", ack.status);
    assert_eq!(ack.digest, batch.value().digest);
    let names = object_names(&objects);
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        std::fs::read(objects.join(&names[0])).unwrap(),
        batch.value().payload.as_ref(),
        "the object is not the batch"
    );
    assert_eq!(batch_objects(&s3, "multipart"), 1, "the S3 listing differs");
    // The upload that completed left nothing; the one the store lost may
    // have left its parts if its abort could not reach the store (a bucket
    // lifecycle rule removes those; docs/operating.md).
    let left: HashSet<String> = s3
        .upload_files()
        .iter()
        .filter_map(|name| name.strip_prefix(".upload_id-")?.get(..36).map(str::to_owned))
        .collect();
    assert!(
        left.is_subset(&uploads_at_kill),
        "an upload other than the interrupted one was left behind: {left:?}"
    );
    assert!(storage.terminate(Duration::from_secs(30)));
    println!(
        "figure: store killed after part 1 of a {:.1} MiB batch ({} parts), down 5 s: stored {:.1} s after the kill, \
         {attempts} send(s), answer {:?}, interrupted uploads left {}",
        bytes as f64 / 1048576.0,
        bytes.div_ceil(5 * 1024 * 1024),
        landed.as_secs_f64(),
        ack.status,
        left.len()
    );
}

/// The storage is SIGKILLed after the store confirmed the object and before
/// it acked: the AM sends the batch again to the storage restarted on the
/// same address, which finds the object and answers ALREADY_STORED; the AM
/// deletes its records, and the object was written once.
#[test]
fn a_storage_killed_between_the_stores_confirmation_and_its_ack_answers_already_stored() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address = address();
    let first = storage_on_bucket(
        &pki,
        &s3,
        "confirmed",
        storage_address,
        &[],
        &[("ACCT_FAILPOINT", "storage-after-store")],
    );
    let am = AmProcess::start(
        pki.data(),
        &["--storage", &storage_address.to_string(), "--export-interval-ms", "200"],
    );
    let messages = ingest(&pki, &am, 2, 100);
    assert!(
        first.wait_for_line("failpoint storage-after-store reached", EXPORT_TIMEOUT),
        "the storage never stored a batch"
    );
    first.kill();
    let killed = Instant::now();
    let objects = s3.objects("confirmed");
    let names_at_kill = object_names(&objects);
    assert_eq!(names_at_kill.len(), 1, "the store confirmed the object");
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(objects.join(name)).unwrap().ino()
    };
    let inode_at_kill = inode(&names_at_kill[0]);
    assert_eq!(hot_records(&pki, &am), messages.len() as u64, "no ack reached the AM");

    let second = storage_on_bucket(&pki, &s3, "confirmed", storage_address, &[], &[]);
    assert!(
        wait_until(EXPORT_TIMEOUT, || hot_records(&pki, &am) == 0),
        "the AM never got a stored-class answer"
    );
    let recovered = killed.elapsed();
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(second.terminate(Duration::from_secs(30)));
    assert_eq!(cold_ids_once(&objects), sent_ids(&messages));
    let names = object_names(&objects);
    assert!(names.contains(&names_at_kill[0]), "the first object is still there");
    assert_eq!(
        names.len(),
        names.iter().collect::<HashSet<_>>().len(),
        "an object twice"
    );
    assert_eq!(
        inode(&names_at_kill[0]),
        inode_at_kill,
        "the object was written again: the answer was not ALREADY_STORED"
    );
    println!(
        "figure: storage killed between the store's confirmation and its ack: the AM's records deleted {:.1} s later, \
         the object written once",
        recovered.as_secs_f64()
    );
}

/// Two storages serving one bucket are given the same batch at the same
/// moment, as a single PUT and as a multipart upload: one object with the
/// batch's bytes, and both answers in the stored class. (s3s-fs checks for
/// the key and then renames its file into place, so under this race both
/// creates may succeed with the same bytes: the test shows that neither
/// storage fails or answers outside the stored class; that only one create
/// wins is the store's guarantee, which AWS S3 gives, and
/// `a_multipart_batch_sent_again_is_already_stored_and_other_bytes_conflict`
/// shows the storage's side of it.)
/// The batch objects the S3 listing shows under `prefix` (the chain's
/// objects beside them are not batches).
fn batch_objects(s3: &S3Server, prefix: &str) -> usize {
    s3.listed(prefix).iter().filter(|key| key.ends_with(".parquet")).count()
}

#[test]
fn two_storages_given_one_batch_at_once_keep_one_object() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let addresses = [address(), address()];
    let storages: Vec<AmProcess> = addresses
        .iter()
        .map(|listen| storage_on_bucket(&pki, &s3, "shared", *listen, &["--part-mib", PART_MIB], &[]))
        .collect();
    let identity = pki.identity(Role::AccountingManager, "am-1");
    let rt = runtime();
    let mut figures = Vec::new();
    for (rows, row_bytes) in [(500, 200), (12_000, 1024)] {
        let batch: Signed<wire::RecordAccounting> = synthetic_batch(&pki, rows, row_bytes);
        let started = Instant::now();
        let (first, second) = rt.block_on(async {
            tokio::join!(
                send_record(addresses[0], &identity, &batch),
                send_record(addresses[1], &identity, &batch)
            )
        });
        let elapsed = started.elapsed();
        let statuses = [first.unwrap().status, second.unwrap().status];
        assert!(statuses.iter().all(|status| stored_class(*status)), "{statuses:?}");
        let objects = s3.objects("shared");
        let name = format!("batch-{}.parquet", batch.value().batch_id);
        let matching: Vec<String> = object_names(&objects)
            .into_iter()
            .filter(|object| object.ends_with(&name))
            .collect();
        assert_eq!(matching.len(), 1, "{matching:?}");
        assert_eq!(
            std::fs::read(objects.join(&matching[0])).unwrap(),
            batch.value().payload.as_ref()
        );
        figures.push(format!(
            "{:.1} MiB: {statuses:?} in {:.2} s",
            batch.value().payload.len() as f64 / 1048576.0,
            elapsed.as_secs_f64()
        ));
    }
    assert_eq!(batch_objects(&s3, "shared"), 2, "two batches, two objects");
    for storage in storages {
        assert!(storage.terminate(Duration::from_secs(30)));
    }
    println!("figure: one batch to two storages at once: {}", figures.join("; "));
}

/// A multipart batch stored by one storage and sent to another on the same
/// bucket: ALREADY_STORED, the object untouched (the second storage's
/// completion was refused with 412). The same batch id with other bytes:
/// CONFLICTING_BATCH, the object untouched.
#[test]
fn a_multipart_batch_sent_again_is_already_stored_and_other_bytes_conflict() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let addresses = [address(), address()];
    let storages: Vec<AmProcess> = addresses
        .iter()
        .map(|listen| storage_on_bucket(&pki, &s3, "again", *listen, &["--part-mib", PART_MIB], &[]))
        .collect();
    let identity = pki.identity(Role::AccountingManager, "am-1");
    let rt = runtime();
    let batch = synthetic_batch(&pki, 12_000, 1024);
    assert!(batch.value().payload.len() > 2 * 5 * 1024 * 1024);
    let first = rt.block_on(send_record(addresses[0], &identity, &batch)).unwrap();
    assert_eq!(first.status, RecordStatus::STORED);
    let objects = s3.objects("again");
    let names = object_names(&objects);
    assert_eq!(names.len(), 1);
    let inode = || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(objects.join(&names[0])).unwrap().ino()
    };
    let stored_inode = inode();

    let again = rt.block_on(send_record(addresses[1], &identity, &batch)).unwrap();
    assert_eq!(again.status, RecordStatus::ALREADY_STORED);
    assert_eq!(again.digest, batch.value().digest);
    assert_eq!(inode(), stored_inode, "the object was written again");

    let other = synthetic_batch_with_id(&pki, batch.value().batch_id, 12_000, 1024);
    assert_ne!(other.value().digest, batch.value().digest);
    let conflict = rt.block_on(send_record(addresses[1], &identity, &other)).unwrap();
    assert_eq!(conflict.status, RecordStatus::CONFLICTING_BATCH);
    assert_eq!(conflict.digest, batch.value().digest, "the answer names what is stored");
    assert_eq!(inode(), stored_inode, "the object was overwritten");
    assert_eq!(
        std::fs::read(objects.join(&names[0])).unwrap(),
        batch.value().payload.as_ref()
    );
    assert_eq!(batch_objects(&s3, "again"), 1);
    for storage in storages {
        assert!(storage.terminate(Duration::from_secs(30)));
    }
}
