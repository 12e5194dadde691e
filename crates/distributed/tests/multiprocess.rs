//! Real multi-process runs of the collectives on Gloo (CPU): the test binary
//! re-executes itself once per rank (the ignored `child` test, selected by
//! `DIST_TEST_ROLE`), with torchrun's variables set, so the launch-environment
//! path is the one users take. Values are small integers and halves, so every
//! sum is exact in f32 and results are compared bitwise.
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use distributed::{Backend, GroupOptions, LaunchEnv, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

const ROLE: &str = "DIST_TEST_ROLE";
const TIMEOUT_MS: &str = "DIST_TEST_TIMEOUT_MS";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Runs `world` children in role `role`; kills them and fails after `deadline`.
fn launch(
    role: &str,
    world: usize,
    timeout: Duration,
    deadline: Duration,
) -> (Vec<Output>, Duration) {
    let port = free_port();
    let exe = std::env::current_exe().expect("test binary path");
    let start = Instant::now();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ROLE, role)
                .env(TIMEOUT_MS, timeout.as_millis().to_string())
                .envs(distributed::local_launch_vars(rank, world, port))
                .env("OMP_NUM_THREADS", "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a rank")
        })
        .collect();
    let mut children = children;
    while children
        .iter_mut()
        .any(|c| c.try_wait().expect("poll child").is_none())
    {
        if start.elapsed() > deadline {
            for child in &mut children {
                let _ = child.kill();
            }
            panic!("{role} x{world}: ranks still running after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let outputs = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("collect child output"))
        .collect();
    (outputs, elapsed)
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn check_collectives(world: usize) {
    let (outputs, _) = launch(
        "collectives",
        world,
        Duration::from_secs(60),
        Duration::from_secs(120),
    );
    for (rank, output) in outputs.iter().enumerate() {
        assert!(output.status.success(), "rank {rank}: {}", text(output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains(&format!("COLLECTIVES_OK rank={rank}")),
            "rank {rank}: {}",
            text(output)
        );
    }
}

#[test]
fn collectives_two_processes() {
    check_collectives(2);
}

#[test]
fn collectives_three_processes() {
    check_collectives(3);
}

/// One rank exits right after joining; the others' next collective must fail
/// with an error naming it, well within their timeout (no hang).
#[test]
fn dead_rank_makes_peers_fail() {
    let timeout = Duration::from_secs(5);
    let (outputs, elapsed) = launch("dead", 3, timeout, Duration::from_secs(60));
    assert!(elapsed < timeout * 4, "took {elapsed:?}");
    assert_eq!(
        outputs[2].status.code(),
        Some(3),
        "rank 2: {}",
        text(&outputs[2])
    );
    for output in &outputs[..2] {
        assert!(output.status.success(), "{}", text(output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("PEER_FAILURE all_reduce on rank"),
            "{}",
            text(output)
        );
    }
}

/// One rank stays alive but stops taking part; the others must give up after
/// the timeout with an error, not wait forever.
#[test]
fn hung_rank_times_out() {
    let timeout = Duration::from_secs(2);
    let (outputs, elapsed) = launch("hung", 2, timeout, Duration::from_secs(60));
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let stdout = String::from_utf8_lossy(&outputs[0].stdout);
    assert!(outputs[0].status.success(), "{}", text(&outputs[0]));
    assert!(
        stdout.contains("PEER_FAILURE all_reduce on rank 0"),
        "{}",
        text(&outputs[0])
    );
}

#[test]
fn init_times_out_without_peers() {
    let options = GroupOptions {
        master_addr: "127.0.0.1".to_owned(),
        master_port: free_port(),
        rank: 0,
        world_size: 2,
        backend: Backend::Gloo,
        timeout: Duration::from_millis(1500),
    };
    let start = Instant::now();
    let err = ProcessGroup::new(&options).expect_err("no peer joins");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let message = err.to_string();
    assert!(
        message.contains("process group init (rank 0 of 2, gloo"),
        "{message}"
    );
}

/// Body of one rank; does nothing unless started by `launch`.
#[test]
#[ignore = "one rank of the multi-process tests, which start it themselves"]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let env = LaunchEnv::from_env()
        .expect("valid launch variables")
        .expect("launched with RANK set");
    let timeout_ms: u64 = std::env::var(TIMEOUT_MS)
        .expect("timeout")
        .parse()
        .expect("ms");
    let options = GroupOptions::from_launch(&env, Backend::Gloo, Duration::from_millis(timeout_ms));
    let group = ProcessGroup::new(&options).expect("join the group");
    match role.as_str() {
        "collectives" => collectives(&group),
        "dead" => {
            if group.rank() == 2 {
                std::process::exit(3);
            }
            peer_failure(&group);
        }
        "hung" => {
            if group.rank() == 1 {
                std::thread::sleep(Duration::from_millis(timeout_ms * 5));
                std::process::exit(0);
            }
            peer_failure(&group);
        }
        other => panic!("unknown role {other}"),
    }
}

fn peer_failure(group: &ProcessGroup) {
    let mut t = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let err = group
        .all_reduce(&mut t, ReduceOp::Sum)
        .expect_err("a peer is gone");
    println!("PEER_FAILURE {err}");
    // Skip destructors: the backend's threads may still be tied to the dead peer.
    std::process::exit(0);
}

/// Rank r's distinct, non-zero test values.
fn values(rank: usize, n: i64) -> Tensor {
    Tensor::arange(n, (Kind::Float, Device::Cpu)) * (rank as f64 + 1.0) + 0.5
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{name}: shape");
    assert!(got.equal(want), "{name}: got {got:?} want {want:?}");
}

fn collectives(group: &ProcessGroup) {
    let (rank, world) = (group.rank(), group.world_size());
    let n = 6;
    let sum = (0..world)
        .map(|r| values(r, n))
        .fold(Tensor::zeros([n], (Kind::Float, Device::Cpu)), |a, b| a + b);

    let mut t = values(rank, n);
    group.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    assert_same("sum", &t, &sum);

    let mut t = values(rank, n);
    group.all_reduce(&mut t, ReduceOp::Avg).unwrap();
    assert_same("avg", &t, &(&sum / world as f64));

    let mut t = values(rank, n);
    group.all_reduce(&mut t, ReduceOp::Max).unwrap();
    assert_same("max", &t, &values(world - 1, n));

    let mut t = Tensor::from_slice(&[rank as i64 + 1, -(rank as i64)]);
    group.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    let w = world as i64;
    assert_same(
        "i64 sum",
        &t,
        &Tensor::from_slice(&[w * (w + 1) / 2, -(w * (w - 1) / 2)]),
    );

    // Two collectives in flight at once, finished in the opposite order.
    let mut a = values(rank, n);
    let mut b = values(rank, 3) * 2.0;
    let work_a = group.all_reduce_async(&mut a, ReduceOp::Sum).unwrap();
    let work_b = group.all_reduce_async(&mut b, ReduceOp::Avg).unwrap();
    work_b.wait().unwrap();
    work_a.wait().unwrap();
    assert_same("async a", &a, &sum);
    let sum3 = (0..world)
        .map(|r| values(r, 3) * 2.0)
        .fold(Tensor::zeros([3], (Kind::Float, Device::Cpu)), |x, y| x + y);
    assert_same("async b", &b, &(sum3 / world as f64));

    let root = world - 1;
    let mut t = if rank == root {
        values(root, n)
    } else {
        Tensor::full([n], -7.0, (Kind::Float, Device::Cpu))
    };
    group.broadcast(&mut t, root).unwrap();
    assert_same("broadcast", &t, &values(root, n));

    let mut gathered = Tensor::zeros([world as i64 * n], (Kind::Float, Device::Cpu));
    group.all_gather(&mut gathered, &values(rank, n)).unwrap();
    let want = Tensor::cat(&(0..world).map(|r| values(r, n)).collect::<Vec<_>>(), 0);
    assert_same("all_gather", &gathered, &want);

    let whole = world as i64 * n;
    let mut part = Tensor::zeros([n], (Kind::Float, Device::Cpu));
    group
        .reduce_scatter(&mut part, &values(rank, whole), ReduceOp::Sum)
        .unwrap();
    let total = (0..world).map(|r| values(r, whole)).fold(
        Tensor::zeros([whole], (Kind::Float, Device::Cpu)),
        |a, b| a + b,
    );
    assert_same(
        "reduce_scatter",
        &part,
        &total.narrow(0, rank as i64 * n, n),
    );

    // Reduce to each root in turn, all in flight at once (ZeRO-1's gradient
    // reduction: one owner per tensor), then broadcasts back from each root.
    let mut ts: Vec<Tensor> = (0..world).map(|_| values(rank, n)).collect();
    let works: Vec<_> = ts
        .iter_mut()
        .enumerate()
        .map(|(root, t)| group.reduce_async(t, root, ReduceOp::Sum).unwrap())
        .collect();
    works.into_iter().for_each(|w| w.wait().unwrap());
    assert_same("reduce", &ts[rank], &sum);
    let works: Vec<_> = ts
        .iter_mut()
        .enumerate()
        .map(|(root, t)| group.broadcast_async(t, root).unwrap())
        .collect();
    works.into_iter().for_each(|w| w.wait().unwrap());
    for t in &ts {
        assert_same("broadcast after reduce", t, &sum);
    }
    let err = group
        .reduce(&mut values(rank, n), world, ReduceOp::Sum)
        .unwrap_err();
    assert!(err.to_string().contains("root"), "{err}");

    let mut wrong = Tensor::zeros([n + 1], (Kind::Float, Device::Cpu));
    let err = group.all_gather(&mut wrong, &values(rank, n)).unwrap_err();
    assert!(err.to_string().contains("is not"), "{err}");

    group.barrier().unwrap();
    println!("COLLECTIVES_OK rank={rank}");
}
