//! The control plane over real connections: handshakes, loss from silence measured where frames are
//! received, loss at a closed link. Nodes here are fake workers; tests/engine.rs runs real engines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use xfd_core::control::core::RunPlan;
use xfd_core::control::link::{self, LinkConfig, Work, Worker};
use xfd_core::control::progress::NodeState;
use xfd_core::control::server::{Coordinator, CoordinatorConfig};
use xfd_core::control::wire::{self, Report};
use xfd_core::scheduler::SchedulerConfig;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// A coordinator that waits for `expected` nodes.
async fn coordinator(lost_after: Duration, expected: &[&str]) -> Coordinator {
    Coordinator::start(CoordinatorConfig {
        plan: RunPlan {
            units: vec![("u0".into(), 10), ("u1".into(), 10)],
            unique_bytes: 20,
            scheduler: SchedulerConfig::default(),
        },
        token: TOKEN.into(),
        bind: "127.0.0.1:0".parse().unwrap(),
        lost_after,
        snapshot_every: Duration::from_millis(20),
        with_chunks: false,
        expected: expected.iter().map(|n| n.to_string()).collect(),
        origin_hold: Duration::from_secs(60),
    })
    .await
    .unwrap()
}

/// A node that takes its work and never finishes it: it only sends heartbeats.
#[derive(Default)]
struct Idle(Mutex<Vec<Work>>);

impl Worker for Idle {
    fn start(&self, work: Work) {
        self.0.lock().unwrap().push(work);
    }
}

fn link_config(coordinator: &Coordinator, node: &str, token: &str) -> LinkConfig {
    LinkConfig {
        coordinator: coordinator.address(),
        token: token.into(),
        node: node.into(),
        heartbeat: Duration::from_millis(50),
    }
}

fn states(coordinator: &Coordinator) -> Vec<(String, NodeState, Vec<String>)> {
    let status = coordinator.status();
    status
        .snapshot
        .nodes
        .iter()
        .map(|n| (status.nodes[n.node as usize].clone(), n.state, n.failures.clone()))
        .collect()
}

/// Opens a link by hand: the handshake, then nothing at all.
async fn mute_link(coordinator: &Coordinator, node: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(coordinator.address()).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n{}: {node}\r\n\r\n",
        wire::PATH,
        wire::PROTOCOL,
        wire::NODE_HEADER
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_lost_and_one_that_sends_heartbeats_is_not() {
    let coordinator = coordinator(Duration::from_millis(500), &["talks", "mute"]).await;
    let idle = Arc::new(Idle::default());
    let (_keep, reports) = mpsc::unbounded_channel::<Report>();
    tokio::spawn(link::run(
        link_config(&coordinator, "talks", TOKEN),
        reports,
        idle.clone(),
    ));
    let _mute = mute_link(&coordinator, "mute").await;
    let needs = vec!["u0".to_string(), "u1".to_string()];
    coordinator.join("talks", "127.0.0.2:1", needs.clone(), vec![]).unwrap();
    coordinator.join("mute", "127.0.0.3:1", needs, vec![]).unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;

    let states = states(&coordinator);
    assert_eq!(states[0].0, "talks");
    assert_eq!(states[0].1, NodeState::Running, "{states:?}");
    assert_eq!(states[1].1, NodeState::Lost, "{states:?}");
    assert!(
        states[1].2.iter().any(|f| f.contains("no frame from its agent")),
        "{states:?}"
    );
    assert!(!idle.0.lock().unwrap().is_empty(), "the talking node was given work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_link_loses_its_node_at_once() {
    let coordinator = coordinator(Duration::from_secs(60), &["gone"]).await;
    let mute = mute_link(&coordinator, "gone").await;
    coordinator
        .join("gone", "127.0.0.2:1", vec!["u0".into()], vec![])
        .unwrap();
    drop(mute); // the agent process died: the kernel closes its connection
    for _ in 0..100 {
        if states(&coordinator).first().is_some_and(|s| s.1 == NodeState::Lost) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let states = states(&coordinator);
    assert_eq!(states[0].1, NodeState::Lost, "{states:?}");
    assert!(
        states[0].2.iter().any(|f| f.contains("control link closed")),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_with_the_wrong_token_is_refused_with_the_reason() {
    let coordinator = coordinator(Duration::from_secs(60), &["n"]).await;
    let (_keep, reports) = mpsc::unbounded_channel::<Report>();
    let error = link::run(
        link_config(&coordinator, "n", "not-the-token"),
        reports,
        Arc::new(Idle::default()),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("wrong run token"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_the_run_ends_every_link() {
    let coordinator = coordinator(Duration::from_secs(60), &["n"]).await;
    let (_keep, reports) = mpsc::unbounded_channel::<Report>();
    let running = tokio::spawn(link::run(
        link_config(&coordinator, "n", TOKEN),
        reports,
        Arc::new(Idle::default()),
    ));
    coordinator.join("n", "127.0.0.2:1", vec!["u0".into()], vec![]).unwrap();
    tokio::task::spawn_blocking(move || coordinator.end()).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.unwrap(), link::LinkEnd::Ended);
}

/// Nodes join one by one as their agents come up. A unit that a node still starting holds in its cache
/// must come from it, not from the origin through a node that joined first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_transfers_wait_for_every_node_to_join() {
    let coordinator = coordinator(Duration::from_secs(60), &["early", "cached"]).await;
    let early = Arc::new(Idle::default());
    let (_keep, reports) = mpsc::unbounded_channel::<Report>();
    tokio::spawn(link::run(
        link_config(&coordinator, "early", TOKEN),
        reports,
        early.clone(),
    ));
    let needs = vec!["u0".to_string(), "u1".to_string()];
    coordinator.join("early", "127.0.0.2:1", needs.clone(), vec![]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        early.0.lock().unwrap().is_empty(),
        "nothing from the origin while a node is still starting"
    );

    let held = vec![
        ("u0".to_string(), "d0".to_string()),
        ("u1".to_string(), "d1".to_string()),
    ];
    coordinator.join("cached", "127.0.0.3:1", needs, held).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let work = early.0.lock().unwrap().clone();
    let origin: Vec<_> = work.iter().flat_map(|w| w.origin.clone()).collect();
    let mut peers: Vec<_> = work
        .iter()
        .flat_map(|w| w.peers.iter().map(|p| (p.unit.clone(), p.peer.clone())))
        .collect();
    peers.sort();
    assert!(origin.is_empty(), "{work:?}");
    assert_eq!(
        peers,
        vec![("u0".into(), "127.0.0.3:1".into()), ("u1".into(), "127.0.0.3:1".into())]
    );
}
