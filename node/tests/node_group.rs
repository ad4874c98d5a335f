//! A region hosted by a replica group of four `metatopia up` processes on
//! loopback (`metatopia group init`): inputs sent continuously through
//! every member commit; the members sign agreeing checkpoints; after
//! `kill -9` of the primary the other three go on under a new one; a fifth
//! process joins as an observer mid-run and reaches the members' hash; the
//! killed one restarts from its log, catches up and agrees again; every
//! acknowledged input is in the world exactly once.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, eventually, eventually_or, group_init, observer_agrees, run, statuses};

/// The newest checkpoint this member has seen that all four signed and
/// agree on, if any.
fn agreed(node: &Node) -> Option<u64> {
    let status = node.get("/api/status").json().ok()?;
    let checkpoints = status["group"]["checkpoints"].as_array()?.clone();
    checkpoints
        .iter()
        .find(|c| c["signed"] == 4 && c["agree"] == true)
        .and_then(|c| c["tick"].as_u64())
}

fn say(data: &Path, text: &str) -> u64 {
    let out = run(&["say", "--data", data.to_str().unwrap(), text]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "say failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "committed at tick N (seq S)"
    stdout
        .split("committed at tick ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("say printed {stdout:?}"))
}

fn chat(node: &Node) -> Vec<String> {
    let state = node.get("/api/regions/1/state").json().unwrap();
    state["chat"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|l| l["text"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The group tests run one at a time: each runs four or five debug
/// processes that tick at 20 Hz and fsync every tick, and two such groups
/// at once on a 2-core machine measure the machine, not the group.
static SERIAL: Mutex<()> = Mutex::new(());

/// The member that the group's engine names primary, as `member`'s status
/// shows it.
fn primary(node: &Node) -> Option<String> {
    let status = node.get("/api/status").json().ok()?;
    status["group"]["primary"].as_str().map(str::to_string)
}

/// This node's key, as its status shows it.
fn me(node: &Node) -> String {
    let status = node.get("/api/status").json().unwrap();
    status["group"]["me"].as_str().unwrap().to_string()
}

/// Each member's (HTTP base, token), none while it is down.
type Targets = Arc<Mutex<Vec<Option<(String, String)>>>>;

/// A client that keeps sending chat lines through whichever members are
/// up, and remembers every line a member acknowledged (HTTP 200 means
/// finalized).
struct Client {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    /// Which member acknowledged each line, and its answer.
    receipts: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(targets: Targets) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let receipts = Arc::new(Mutex::new(Vec::new()));
        let (s, a, rc) = (stop.clone(), acked.clone(), receipts.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            // Bounded: the chat history keeps 200 lines.
            while !s.load(Ordering::Relaxed) && n < 150 {
                let target = targets.lock().unwrap()[n as usize % 4].clone();
                let Some((base, token)) = target else {
                    n += 1;
                    continue;
                };
                let text = format!("line {n}");
                let body = serde_json::json!({"do": "say", "text": text});
                let auth = format!("Bearer {token}");
                let r = metatopia_node::client::request(
                    &base,
                    "POST",
                    "/api/regions/1/inputs",
                    &[("Authorization", auth.as_str())],
                    Some(&serde_json::to_vec(&body).unwrap()),
                );
                if let Ok(r) = r
                    && r.status == 200
                {
                    rc.lock().unwrap().push(format!(
                        "{text}: member {} answered {}",
                        n % 4,
                        String::from_utf8_lossy(&r.body)
                    ));
                    a.lock().unwrap().push(text);
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Client {
            stop,
            acked,
            receipts,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn finish(&mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

#[test]
fn a_group_of_four_processes_survives_a_primary_kill_and_an_observer_joins() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (base, dirs) = group_init();
    let mut nodes: Vec<Option<Node>> = dirs.iter().map(|d| Some(Node::start(d))).collect();

    // Each member's player joins through its own node (an input through
    // any member commits, and member 0 shows it).
    for d in &dirs {
        say(d, "hello group");
    }
    let n0 = nodes[0].as_ref().unwrap();
    eventually("member 0 to show the chat line", || {
        chat(n0).contains(&"hello group".to_string()).then_some(())
    });
    // All four sign the same region hash at a checkpoint.
    eventually("a checkpoint all four agree on", || agreed(n0));
    // Its status shows a live link to each of the three others.
    let status = n0.get("/api/status").json().unwrap();
    let links = &status["group"]["links"];
    for m in status["group"]["members"].as_array().unwrap() {
        if *m == status["group"]["me"] {
            continue;
        }
        let l = &links[m.as_str().unwrap()];
        assert!(
            l["connected"] == true
                && l["frames_in"].as_u64() > Some(0)
                && l["frames_out"].as_u64() > Some(0),
            "member 0's link to {m} is not live: {l}"
        );
    }

    // A client keeps sending through every member that is up.
    let targets = Arc::new(Mutex::new(
        nodes
            .iter()
            .map(|n| n.as_ref().map(|n| (n.base.clone(), n.token())))
            .collect::<Vec<_>>(),
    ));
    let mut client = Client::start(targets.clone());
    eventually("the client's first acknowledged lines", || {
        (client.acked() >= 5).then_some(())
    });

    // kill -9 the primary: the other three go on.
    let keys: Vec<String> = nodes.iter().map(|n| me(n.as_ref().unwrap())).collect();
    let p = primary(n0).expect("the status names a primary");
    let victim = keys
        .iter()
        .position(|k| *k == p)
        .expect("the primary is a member");
    targets.lock().unwrap()[victim] = None;
    nodes[victim].take().unwrap().kill9();
    let before = client.acked();
    eventually("progress after the primary's kill", || {
        (client.acked() >= before + 5).then_some(())
    });
    let survivor = (0..4).find(|i| *i != victim).unwrap();
    let new_primary = eventually("a new primary", || {
        primary(nodes[survivor].as_ref().unwrap()).filter(|k| *k != p)
    });
    let survivors: Vec<&String> = (0..4).filter(|i| *i != victim).map(|i| &keys[i]).collect();
    assert!(
        survivors.contains(&&new_primary),
        "the new primary {new_primary} is not a surviving member"
    );

    let named = |nodes: &[Option<Node>], observer: &Node| {
        let mut all: Vec<(String, &Node)> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if let Some(n) = n {
                all.push((format!("member {i}"), n));
            }
        }
        all.push(("the observer".into(), observer));
        statuses(all)
    };
    // A fifth process joins as an observer mid-run and agrees with the
    // three members' signed hashes.
    let observer_dir = base.path().join("observer");
    let observer = Node::observe(&observer_dir, &nodes[survivor].as_ref().unwrap().base);
    eventually_or(
        "the observer to agree with the members at a checkpoint",
        || observer_agrees(&observer, 3),
        || named(&nodes, &observer),
    );

    // The killed member restarts from its log, catches up and agrees again.
    nodes[victim] = Some(Node::start(&dirs[victim]));
    targets.lock().unwrap()[victim] = nodes[victim].as_ref().map(|n| (n.base.clone(), n.token()));
    let restarted = nodes[victim].as_ref().unwrap();
    let tick = eventually_or(
        "a checkpoint all four agree on after the restart",
        || agreed(restarted),
        || {
            format!(
                "member {victim} was restarted; statuses:\n{}",
                named(&nodes, &observer)
            )
        },
    );
    let acked = client.finish();
    assert!(acked.len() >= 10, "only {} lines acknowledged", acked.len());

    // Every acknowledged line is in the world exactly once, on every
    // member and on the observer.
    let last = acked.last().unwrap().clone();
    let everyone: Vec<(String, &Node)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.as_ref().map(|n| (format!("member {i}"), n)))
        .chain(std::iter::once(("the observer".to_string(), &observer)))
        .collect();
    for (name, node) in &everyone {
        let lines = eventually("the last acknowledged line everywhere", || {
            let c = chat(node);
            c.contains(&last).then_some(c)
        });
        for a in &acked {
            let n = lines.iter().filter(|l| *l == a).count();
            if n != 1 {
                // Say where the line is and what each node knows, so a
                // failure here is a bug report (member {victim} was
                // killed and restarted).
                let report: Vec<String> = everyone
                    .iter()
                    .map(|(name, node)| {
                        let c = chat(node);
                        let count = c.iter().filter(|l| *l == a).count();
                        format!(
                            "{name} has it {count} times in {c:?}; status {}",
                            node.get("/api/status").text()
                        )
                    })
                    .collect();
                panic!(
                    "{a:?} (acknowledged) is in {name}'s chat {n} times; member {victim} was killed and restarted\nreceipts:\n{}\n{}",
                    client.receipts.lock().unwrap().join("\n"),
                    report.join("\n")
                );
            }
        }
    }
    // And they all sign the same hashes after the restart.
    eventually_or(
        "a later checkpoint all four agree on",
        || agreed(restarted).filter(|t| *t > tick),
        || named(&nodes, &observer),
    );
    eventually_or(
        "the observer to agree later too",
        || observer_agrees(&observer, 4).filter(|t| *t > tick),
        || named(&nodes, &observer),
    );
}

/// Member 2 executes tick 30 wrongly (a test-build switch): its checkpoint
/// at tick 39 differs from the three others', it reports the desync,
/// adopts the group's snapshot, serves again and signs agreeing hashes;
/// restarted without the switch, it recovers from the adopted snapshot.
#[test]
fn a_diverged_member_is_detected_and_resynced() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_base, dirs) = group_init();
    let mut nodes: Vec<Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i == 2 {
                Node::start_env(d, &[("METATOPIA_TEST_DIVERGE_AT", "30")])
            } else {
                Node::start(d)
            }
        })
        .collect();
    let resynced = eventually("member 2 to resync", || {
        let status = nodes[2].get("/api/status").json().ok()?;
        (status["group"]["resyncs"].as_u64()? >= 1 && status["group"]["desync"].is_null())
            .then_some(status)
    });
    assert_eq!(resynced["group"]["resyncs"], 1, "{resynced}");
    // It says what differed: the player only it let in.
    let last = &resynced["group"]["last_desync"];
    assert_eq!(last["tick"], 39, "{resynced}");
    let differences: Vec<&str> = last["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        differences
            .iter()
            .any(|d| d.starts_with("player ") && d.ends_with("(exists): present != absent")),
        "{differences:?}"
    );
    // The others saw member 2's different hash at tick 39.
    let seen = nodes[0].get("/api/status").json().unwrap();
    let differs = seen["group"]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["tick"] == 39 && c["agree"] == false);
    assert!(
        differs,
        "member 0 did not see the differing checkpoint: {seen}"
    );
    let after = eventually("a later checkpoint all four agree on", || {
        agreed(&nodes[2]).filter(|t| *t > 39)
    });
    // The text view says so too.
    let text = run(&["status", "--data", dirs[2].to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(text.contains("resyncs:     1"), "{text}");
    assert!(text.contains("last desync: at tick 39"), "{text}");
    assert!(text.contains("primary (view"), "{text}");
    assert_eq!(text.matches("link up, ").count(), 3, "{text}");

    // Restarted without the switch, it recovers from the adopted snapshot
    // and agrees again.
    let old = nodes.remove(2);
    assert!(old.terminate());
    nodes.insert(2, Node::start(&dirs[2]));
    eventually("agreement after the restart", || {
        agreed(&nodes[2]).filter(|t| *t > after)
    });
}
