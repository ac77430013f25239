//! The Accounting Storage on an S3-compatible bucket: a real S3-protocol
//! server (`s3s-fs`, from crates.io, installed by scripts/test.sh;
//! it keeps each object as a file under its root folder) on 127.0.0.1, real
//! `acct storage --bucket` processes, and a real AM exporting to them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use acct_tests::s3::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY, ingest, ingest_on, object_names, storage_on_bucket};
use acct_tests::{
    AmProcess, TestPki, cold_ids_once, cold_rows, free_tcp_port, free_udp_port, hot_records, http_get, sent_ids,
    wait_until,
};

/// Upper bound on waiting for an export to land.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn exports_land_in_the_bucket_once_in_the_folder_layout() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let storage = storage_on_bucket(&pki, &s3, "archive", storage_address, &[], &[]);
    let am = AmProcess::start(
        pki.data(),
        &["--storage", &storage_address.to_string(), "--export-interval-ms", "200"],
    );
    let mut messages = ingest(&pki, &am, 4, 100);
    messages.extend(ingest(&pki, &am, 2, 50));
    let objects = s3.objects("archive");
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&objects).len() == messages.len()),
        "the exports did not reach the bucket"
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    assert_eq!(cold_ids_once(&objects), sent_ids(&messages));
    let names = object_names(&objects);
    assert!(!names.is_empty());
    for name in &names {
        let parts: Vec<&str> = name.split('/').collect();
        assert!(
            parts.len() == 3
                && parts[0].starts_with("date=")
                && parts[1] == "node=am-1"
                && parts[2].starts_with("batch-")
                && parts[2].ends_with(".parquet"),
            "object {name} is not date=…/node=am-1/batch-….parquet"
        );
    }
}

/// The AM is killed after the first AS stored a batch and acked it, before
/// the AM deleted its copy; restarted against a second AS process on the
/// same bucket, it sends the batch again: the second AS, with no state of
/// its own, finds the object (a conditional create refused) and answers
/// ALREADY_STORED; the AM deletes; every record is in the bucket once, in
/// one object per batch.
#[test]
fn a_batch_is_stored_once_by_two_storages_sharing_the_bucket() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let first_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let first = storage_on_bucket(&pki, &s3, "shared", first_address, &[], &[]);
    let am = AmProcess::start_with_env(
        pki.data(),
        &["--storage", &first_address.to_string(), "--export-interval-ms", "200"],
        &[("ACCT_FAILPOINT", "export-after-ack")],
    );
    let messages = ingest(&pki, &am, 5, 100);
    assert!(
        am.wait_for_line("failpoint export-after-ack reached", EXPORT_TIMEOUT),
        "the AM never reached export-after-ack"
    );
    am.kill();
    assert!(first.terminate(Duration::from_secs(30)));
    let objects = s3.objects("shared");
    let names_at_kill = object_names(&objects);
    assert_eq!(names_at_kill.len(), 1, "the first storage acked: its object exists");
    // s3s-fs writes a new object into a new file: the file's identity
    // shows whether the second storage wrote the object again.
    let inode = |name: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(objects.join(name)).unwrap().ino()
    };
    let inode_at_kill = inode(&names_at_kill[0]);

    let second_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let second = storage_on_bucket(&pki, &s3, "shared", second_address, &[], &[]);
    let am = AmProcess::start(
        pki.data(),
        &["--storage", &second_address.to_string(), "--export-interval-ms", "200"],
    );
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&objects).len() >= messages.len()),
        "the restarted AM did not finish the export"
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(second.terminate(Duration::from_secs(30)));
    assert_eq!(cold_ids_once(&objects), sent_ids(&messages));
    let names = object_names(&objects);
    assert!(
        names.contains(&names_at_kill[0]),
        "the first object is still there, once"
    );
    assert_eq!(
        inode(&names_at_kill[0]),
        inode_at_kill,
        "the second storage wrote the batch again instead of answering ALREADY_STORED"
    );
    assert_eq!(
        names.len(),
        names.iter().collect::<HashSet<_>>().len(),
        "an object name twice"
    );
}

/// A batch id already in the bucket with other bytes: the storage's
/// conditional create is refused (the server answers 412 to a second
/// `If-None-Match: *` PUT; a server that ignored it would overwrite the
/// object and answer STORED), the answer is CONFLICTING_BATCH, the object
/// keeps its bytes, and the AM keeps its records.
#[test]
fn a_batch_id_stored_with_other_bytes_is_refused_and_the_am_keeps_its_records() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let first_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let first = storage_on_bucket(&pki, &s3, "conflict", first_address, &[], &[]);
    let am = AmProcess::start_with_env(
        pki.data(),
        &["--storage", &first_address.to_string(), "--export-interval-ms", "200"],
        &[("ACCT_FAILPOINT", "export-after-ack")],
    );
    let messages = ingest(&pki, &am, 2, 100);
    assert!(
        am.wait_for_line("failpoint export-after-ack reached", EXPORT_TIMEOUT),
        "the AM never reached export-after-ack"
    );
    am.kill();
    assert!(first.terminate(Duration::from_secs(30)));
    // Someone replaced the object's bytes (a bucket shared by mistake, a
    // broken tool): the batch id now names other content.
    let objects = s3.objects("conflict");
    let files = archive::parquet_files(&objects).unwrap();
    assert_eq!(files.len(), 1);
    let other = b"other bytes under the same batch id".to_vec();
    std::fs::write(&files[0], &other).unwrap();

    let second_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let second = storage_on_bucket(&pki, &s3, "conflict", second_address, &[], &[]);
    let metrics_port = free_tcp_port();
    let am = AmProcess::start(
        pki.data(),
        &[
            "--storage",
            &second_address.to_string(),
            "--export-interval-ms",
            "200",
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    // The AM sends the batch and is refused with CONFLICTING_BATCH (0x23).
    let conflicting = || {
        http_get(metrics_port, "/metrics")
            .lines()
            .find_map(|line| {
                line.strip_prefix("acct_export_refused_total{status=\"35\"} ")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(EXPORT_TIMEOUT, || conflicting() >= 1.0),
        "the storage never answered CONFLICTING_BATCH"
    );
    assert_eq!(
        hot_records(&pki, &am),
        messages.len() as u64,
        "the AM keeps its records"
    );
    assert_eq!(std::fs::read(&files[0]).unwrap(), other, "the object keeps its bytes");
    // A refused batch keeps the AM's shutdown export busy until its deadline
    // (30 s): nothing is left to check there.
    am.kill();
    assert!(second.terminate(Duration::from_secs(30)));
}

/// `acct report` and `acct audit` read the bucket as they read a folder:
/// the same totals from `s3://…` as from the objects' files, and the audit
/// passes over the bucket and finds a tampered row in it.
#[test]
fn report_and_audit_read_the_bucket() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let storage = storage_on_bucket(&pki, &s3, "reports", storage_address, &[], &[]);
    let am = AmProcess::start(
        pki.data(),
        &["--storage", &storage_address.to_string(), "--export-interval-ms", "200"],
    );
    let messages = ingest(&pki, &am, 3, 40);
    let objects = s3.objects("reports");
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&objects).len() == messages.len()),
        "the exports did not reach the bucket"
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    let acct = |args: &[&str]| {
        let output = Command::new(acct_tests::binary("acct"))
            .args(args)
            .envs([
                ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ("AWS_REGION", "us-east-1"),
            ])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let url = format!("s3://{BUCKET}/reports");
    let endpoint = s3.endpoint();
    let over_s3 = ["--endpoint", endpoint.as_str(), "--allow-http"];
    let folder = objects.to_str().unwrap();
    let (ok, from_bucket, stderr) = acct(
        &[
            &["report", url.as_str(), "--by", "session", "--format", "csv"][..],
            &over_s3[..],
        ]
        .concat(),
    );
    assert!(ok, "{stderr}");
    let (ok, from_folder, stderr) = acct(&["report", folder, "--by", "session", "--format", "csv"]);
    assert!(ok, "{stderr}");
    assert_eq!(from_bucket, from_folder);
    assert_eq!(
        from_bucket.lines().count(),
        1 + 3,
        "a header and 3 sessions:\n{from_bucket}"
    );
    // The chain in the bucket proves the archive complete.
    let ca = pki.pki().join(pki::CA_CERTIFICATE_FILE);
    let ca = ca.to_str().unwrap();
    let (ok, audit, stderr) = acct(&[&["audit", url.as_str(), "--ca", ca][..], &over_s3[..]].concat());
    assert!(ok, "{audit}{stderr}");
    assert!(
        audit.contains(&format!("{} rows, 0 problems", messages.len())),
        "{audit}"
    );
    assert!(audit.contains("node am-1: batches #1..=#"), "{audit}");
    assert!(
        audit.contains(&format!("commit sequences 1..={}: complete", messages.len())),
        "{audit}"
    );
    // The node's heads moved out of the bucket: the last batches are no
    // longer provable.
    let chain = objects.join("_chain/node=am-1");
    let aside = pki.data().join("heads-aside");
    std::fs::create_dir_all(&aside).unwrap();
    for entry in std::fs::read_dir(&chain).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("head-") {
            std::fs::rename(entry.path(), aside.join(entry.file_name())).unwrap();
        }
    }
    let (ok, audit, _) = acct(&[&["audit", url.as_str(), "--ca", ca][..], &over_s3[..]].concat());
    assert!(!ok && audit.contains("node am-1: no head"), "{audit}");
    for entry in std::fs::read_dir(&aside).unwrap().flatten() {
        std::fs::rename(entry.path(), chain.join(entry.file_name())).unwrap();
    }
    // A batch copied under another name: every row in it is there twice.
    let files = archive::parquet_files(&objects).unwrap();
    let copy = files[0].with_file_name("batch-ffffffffffffffffffffffffffffffff.parquet");
    std::fs::copy(&files[0], &copy).unwrap();
    let (ok, audit, _) = acct(&[&["audit", url.as_str()][..], &over_s3[..]].concat());
    assert!(!ok, "the audit passed a bucket with doubled rows: {audit}");
    assert!(audit.contains("stored twice"), "{audit}");
}

/// Reads the bucket with pyarrow (`S3FileSystem` with `endpoint_override`),
/// polars and DataFusion (its own S3 client); prints, per reader, the rows
/// and the distinct (session_id, message_id) pairs. polars tries its own S3
/// client first and, when s3s-fs answers it 500, reads through pyarrow's
/// (`polars_client` says which).
const PYTHON_S3_READERS: &str = r#"
import json, sys
endpoint, bucket, prefix, key, secret = sys.argv[1:6]
out = {}
import pyarrow.dataset as ds, pyarrow.fs as pafs
fs = pafs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=endpoint, scheme="http", region="us-east-1")
# The objects listed first: a dataset opened on the prefix itself starts with
# a HEAD of the prefix as a key, which s3s-fs answers 500 (AWS answers 404).
paths = [info.path for info in fs.get_file_info(pafs.FileSelector(f"{bucket}/{prefix}", recursive=True))
         if info.path.endswith(".parquet")]
table = ds.dataset(paths, filesystem=fs, format="parquet", partitioning=ds.partitioning(flavor="hive"),
                   partition_base_dir=f"{bucket}/{prefix}").to_table(columns=["session_id", "message_id", "node"])
ids = set(zip(table.column("session_id").to_pylist(), table.column("message_id").to_pylist()))
out["pyarrow"] = {"rows": table.num_rows, "distinct": len(ids), "nodes": sorted(set(table.column("node").to_pylist()))}
dataset = ds.dataset(paths, filesystem=fs, format="parquet", partitioning=ds.partitioning(flavor="hive"),
                     partition_base_dir=f"{bucket}/{prefix}")
import polars as pl
try:
    options = {"aws_endpoint_url": f"http://{endpoint}", "aws_allow_http": "true", "aws_access_key_id": key,
               "aws_secret_access_key": secret, "aws_region": "us-east-1"}
    frame = pl.scan_parquet(f"s3://{bucket}/{prefix}/**/*.parquet", storage_options=options,
                            hive_partitioning=True).select(["session_id", "message_id"]).collect()
    out["polars_client"] = "native"
except OSError:
    # polars' own S3 client gets HTTP 500 from s3s-fs 0.14 on its GETs
    # (AWS serves them): polars reads through pyarrow's S3 client instead.
    frame = pl.scan_pyarrow_dataset(dataset).select(["session_id", "message_id"]).collect()
    out["polars_client"] = "pyarrow"
out["polars"] = {"rows": frame.height, "distinct": frame.unique().height}
from datafusion import SessionContext
from datafusion.object_store import AmazonS3
ctx = SessionContext()
store = AmazonS3(bucket_name=bucket, region="us-east-1", access_key_id=key, secret_access_key=secret,
                 endpoint=f"http://{endpoint}", allow_http=True)
ctx.register_object_store("s3://", store, bucket)
ctx.register_parquet("t", f"s3://{bucket}/{prefix}/")
rows = ctx.sql("select count(*) as n from t").to_pydict()["n"][0]
distinct = ctx.sql("select count(*) as n from (select distinct session_id, message_id from t)").to_pydict()["n"][0]
out["datafusion"] = {"rows": rows, "distinct": distinct}
# DuckDB: over the pyarrow dataset (its httpfs extension is a download).
import duckdb
con = duckdb.connect()
con.register("records", dataset)
rows = con.execute("select count(*) from records").fetchone()[0]
distinct = con.execute("select count(*) from (select distinct session_id, message_id from records)").fetchone()[0]
out["duckdb"] = {"rows": rows, "distinct": distinct}
print(json.dumps(out))
"#;

/// Data teams read the bucket where it is: pyarrow, polars, DataFusion and
/// DuckDB over S3, across two AM nodes' `node=` partitions, count the rows the
/// providers had acked (loadgen's acked count on `am-1`, the test's own on
/// `am-2`), each once.
#[test]
fn python_readers_read_the_bucket() {
    let s3 = S3Server::start();
    let pki = TestPki::new(1, 0);
    let storage_address: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
    let storage = storage_on_bucket(&pki, &s3, "analysis", storage_address, &[], &[]);
    let export = ["--storage", &storage_address.to_string(), "--export-interval-ms", "200"];
    let am = AmProcess::start(pki.data(), &export);
    let (_am2_data, am2) = pki.start_node("am-2", &export);
    let report_path = pki.data().join("loadgen.json");
    let loadgen = Command::new(acct_tests::binary("loadgen"))
        .args(["--am", &am.address.to_string()])
        .arg("--pki")
        .arg(pki.pki())
        .args(["--providers", "20", "--sessions", "40", "--users", "5"])
        .args([
            "--rate",
            "500",
            "--duration",
            "2",
            "--drain",
            "30",
            "--seed",
            "3",
            "--quiet",
        ])
        .arg("--json")
        .arg(&report_path)
        .output()
        .unwrap_or_else(|error| panic!("running loadgen: {error}"));
    assert!(
        loadgen.status.success(),
        "loadgen failed:\n{}",
        String::from_utf8_lossy(&loadgen.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let loadgen_acked = report["acked_stored"].as_u64().unwrap_or_else(|| panic!("{report:#}"));
    assert!(
        loadgen_acked > 0 && report["unanswered"].as_u64() == Some(0),
        "{report:#}"
    );
    let mut messages = ingest_on(&pki, &am2, "am-2", 3, 60);
    messages.extend(ingest_on(&pki, &am2, "am-2", 2, 30));
    let acked = loadgen_acked + messages.len() as u64;
    let objects = s3.objects("analysis");
    assert!(
        wait_until(EXPORT_TIMEOUT, || cold_rows(&objects).len() as u64 == acked),
        "the exports did not reach the bucket"
    );
    assert!(am.terminate(Duration::from_secs(60)));
    assert!(am2.terminate(Duration::from_secs(60)));
    assert!(storage.terminate(Duration::from_secs(30)));
    let nodes: HashSet<String> = object_names(&objects)
        .iter()
        .filter_map(|name| name.split('/').nth(1).map(str::to_owned))
        .collect();
    assert_eq!(nodes, HashSet::from(["node=am-1".into(), "node=am-2".into()]));
    let output = Command::new(acct_tests::python())
        .args(["-c", PYTHON_S3_READERS])
        .args([
            s3.endpoint().trim_start_matches("http://"),
            BUCKET,
            "analysis",
            ACCESS_KEY,
            SECRET_KEY,
        ])
        .output()
        .unwrap_or_else(|error| panic!("running the Python readers (scripts/install-deps.sh installs them): {error}"));
    assert!(
        output.status.success(),
        "the Python readers failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("readers: {readers}");
    for reader in ["pyarrow", "polars", "datafusion", "duckdb"] {
        assert_eq!(readers[reader]["rows"].as_u64(), Some(acked), "{reader}: {readers}");
        assert_eq!(readers[reader]["distinct"].as_u64(), Some(acked), "{reader}: {readers}");
    }
    assert_eq!(
        readers["pyarrow"]["nodes"],
        serde_json::json!(["am-1", "am-2"]),
        "{readers}"
    );
}
