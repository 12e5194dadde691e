//! NCCL on the one GPU of the test machine: a group of one runs every
//! collective on CUDA tensors and leaves the values as the definitions say
//! (the multi-process semantics are covered on Gloo in multiprocess.rs).
use std::net::TcpListener;
use std::time::Duration;

use distributed::{Backend, GroupOptions, ProcessGroup, ReduceOp};
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "needs CUDA"]
fn nccl_group_of_one_runs_every_collective() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let group = ProcessGroup::new(&GroupOptions {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world_size: 1,
        backend: Backend::Nccl,
        timeout: Duration::from_secs(60),
    })
    .unwrap();
    let cuda = Device::Cuda(0);
    let values = Tensor::arange(8, (Kind::Float, cuda)) * 1.5 + 0.25;
    let mut t = values.copy();
    group.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    assert!(t.equal(&values));
    group.all_reduce(&mut t, ReduceOp::Avg).unwrap();
    assert!(t.equal(&values));
    group.broadcast(&mut t, 0).unwrap();
    assert!(t.equal(&values));
    let mut out = Tensor::zeros([8], (Kind::Float, cuda));
    group.all_gather(&mut out, &values).unwrap();
    assert!(out.equal(&values));
    let mut out = Tensor::zeros([8], (Kind::Float, cuda));
    group
        .reduce_scatter(&mut out, &values, ReduceOp::Sum)
        .unwrap();
    assert!(out.equal(&values));
    group.barrier().unwrap();
    // A CPU tensor is refused before it reaches NCCL.
    let mut cpu = Tensor::ones([2], (Kind::Float, Device::Cpu));
    let err = group.all_reduce(&mut cpu, ReduceOp::Sum).unwrap_err();
    assert!(err.to_string().contains("nccl"), "{err}");
}
