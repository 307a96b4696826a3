//! Cluster mode: 2 processes x 2 workers on 127.0.0.1 (timely's TCP runtime) publish exactly
//! the files a single process publishes.

use crate::util::{bin, read_outputs, sizes, stats};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;

/// Two ports free right now on 127.0.0.1.
fn free_ports() -> [u16; 2] {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ]
}

fn run_cluster(recipe: &str, out: &Path, hostfile: &Path) {
    let children: Vec<_> = (0..2)
        .map(|p| {
            bin()
                .args(["run", recipe, "--out", out.to_str().unwrap()])
                .args(["--workers", "2", "--processes", "2", "--process-id"])
                .arg(p.to_string())
                .arg("--hostfile")
                .arg(hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a cluster process")
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "process {p} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn two_processes_of_two_workers_publish_what_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let cluster = tmp.path().join("cluster");
    crate::util::run_ok(&[
        "run",
        "pipelines/demo.toml",
        "--out",
        single.to_str().unwrap(),
    ]);
    let hostfile = tmp.path().join("hosts");
    let [a, b] = free_ports();
    std::fs::write(
        &hostfile,
        format!("# process 0, then process 1\n127.0.0.1:{a}\n127.0.0.1:{b}\n"),
    )
    .unwrap();
    run_cluster("pipelines/demo.toml", &cluster, &hostfile);
    let (x, y) = (read_outputs(&single), read_outputs(&cluster));
    assert_eq!(
        x.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        y.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    for ((name, p), (_, q)) in x.iter().zip(&y) {
        assert!(
            p == q,
            "{name} differs between one process and a 2x2 cluster"
        );
    }
    assert_eq!(sizes(stats(&single)), sizes(stats(&cluster)));
}

#[test]
fn a_bad_cluster_setup_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hosts");
    std::fs::write(&hostfile, "127.0.0.1:1\n").unwrap();
    let out = bin()
        .args(["run", "pipelines/demo.toml", "--out"])
        .arg(tmp.path().join("o"))
        .args(["--processes", "2", "--hostfile"])
        .arg(&hostfile)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lists 1 address(es), but --processes is 2"),
        "{err}"
    );
    let out = bin()
        .args(["run", "pipelines/demo.toml", "--out"])
        .arg(tmp.path().join("o"))
        .args(["--processes", "2", "--process-id", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--process-id 2 is out of range"), "{err}");
}
