//! Desync reports: where two runs that should agree first differ, and
//! which part of the state differs (element and field, player, settings,
//! chat, mailbox, timers, bodies, a script's persistent state).
//!
//! [`first_divergence`] finds the first tick at which two hash traces
//! differ; [`diff_states`] names every difference between two states of
//! one region. `metatopia desync A B` prints both for two snapshot files
//! (`metatopia run --snapshot`), two hash traces (`metatopia run
//! --trace`) or two data directories (the logs' region hashes, then both
//! states rebuilt by `store::Store::rebuild`); the determinism suite (`tests/tests/determinism.rs`) prints
//! them when a variant disagrees.

use std::collections::BTreeSet;
use std::fmt;

use metatopia_scripts::codec::{self, Data};
use metatopia_sim::state::{Element, Player, ScriptSlot, Settings, State};

/// Longest value quoted in a report line, characters.
pub const VALUE_CHARS_MAX: usize = 200;
/// Most differences one report lists; the rest are counted.
pub const DIFFERENCES_MAX: usize = 100;

/// One difference between two states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Which part: `element 1.3`, `player 5f3a…`, `settings`, `chat`,
    /// `mailbox`, `timers`, `body 1.4`, `region`.
    pub part: String,
    /// Which field, e.g. `pos`, `script.state.count`, `line[3]`.
    pub field: String,
    /// The value in the first state (`absent` if it has none).
    pub a: String,
    /// The value in the second state.
    pub b: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {} != {}", self.part, self.field, self.a, self.b)
    }
}

fn cap(s: String) -> String {
    crate::quote::cap(&s, VALUE_CHARS_MAX).into_owned()
}

struct Diffs {
    out: Vec<Difference>,
    /// Differences found beyond [`DIFFERENCES_MAX`].
    more: usize,
}

impl Diffs {
    fn push(&mut self, part: &str, field: &str, a: String, b: String) {
        if self.out.len() >= DIFFERENCES_MAX {
            self.more += 1;
            return;
        }
        self.out.push(Difference {
            part: part.into(),
            field: field.into(),
            a: cap(a),
            b: cap(b),
        });
    }

    fn cmp<T: PartialEq + fmt::Debug>(&mut self, part: &str, field: &str, a: &T, b: &T) {
        if a != b {
            self.push(part, field, format!("{a:?}"), format!("{b:?}"));
        }
    }
}

/// Every difference between two states (at most [`DIFFERENCES_MAX`],
/// then a count of the rest), in a fixed order: region, tick and time,
/// settings, elements by id, players by id, banned, temp admin, chat,
/// mailbox, timers, bodies. Empty if and only if the states are equal.
pub fn diff_states(a: &State, b: &State) -> (Vec<Difference>, usize) {
    let mut d = Diffs {
        out: Vec::new(),
        more: 0,
    };
    // Destructured without `..`: a new field of State fails to compile here
    // until the report covers it.
    let State {
        region,
        tick,
        time_ms,
        settings,
        next_counter,
        elements,
        scripted,
        players,
        banned,
        temp_admin,
        chat,
        mailbox,
        timers,
        bodies,
        walking,
    } = a;
    d.cmp("region", "id", region, &b.region);
    d.cmp("region", "tick", tick, &b.tick);
    d.cmp("region", "time_ms", time_ms, &b.time_ms);
    d.cmp("region", "next_counter", next_counter, &b.next_counter);
    diff_settings(&mut d, settings, &b.settings);
    let ids: BTreeSet<_> = elements.keys().chain(b.elements.keys()).collect();
    for id in ids {
        let part = format!("element {id}");
        match (elements.get(id), b.elements.get(id)) {
            (Some(x), Some(y)) => diff_element(&mut d, &part, x, y),
            (x, y) => d.push(&part, "(exists)", exists(x), exists(y)),
        }
    }
    let set = |d: &mut Diffs, part: &str, a: Vec<String>, b: Vec<String>| {
        if a != b {
            let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).cloned().collect();
            let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).cloned().collect();
            d.push(
                part,
                "members",
                format!("only here: [{}]", only_a.join(", ")),
                format!("only here: [{}]", only_b.join(", ")),
            );
        }
    };
    set(
        &mut d,
        "scripted",
        scripted.iter().map(|x| x.to_string()).collect(),
        b.scripted.iter().map(|x| x.to_string()).collect(),
    );
    let ids: BTreeSet<_> = players.keys().chain(b.players.keys()).collect();
    for id in ids {
        let part = format!("player {id}");
        match (players.get(id), b.players.get(id)) {
            (Some(x), Some(y)) => diff_player(&mut d, &part, x, y),
            (x, y) => d.push(&part, "(exists)", exists(x), exists(y)),
        }
    }
    set(
        &mut d,
        "banned",
        banned.iter().map(|x| x.to_string()).collect(),
        b.banned.iter().map(|x| x.to_string()).collect(),
    );
    d.cmp("region", "temp_admin", temp_admin, &b.temp_admin);
    list(
        &mut d,
        "chat",
        chat.iter(),
        b.chat.iter(),
        chat.len(),
        b.chat.len(),
    );
    list(
        &mut d,
        "mailbox",
        mailbox.iter(),
        b.mailbox.iter(),
        mailbox.len(),
        b.mailbox.len(),
    );
    list(
        &mut d,
        "timers",
        timers.iter(),
        b.timers.iter(),
        timers.len(),
        b.timers.len(),
    );
    let ids: BTreeSet<_> = bodies.keys().chain(b.bodies.keys()).collect();
    for id in ids {
        let part = format!("body {id}");
        match (bodies.get(id), b.bodies.get(id)) {
            (Some(x), Some(y)) => {
                d.cmp(&part, "spec", &x.spec, &y.spec);
                d.cmp(&part, "vel", &x.vel, &y.vel);
                d.cmp(&part, "resting", &x.resting, &y.resting);
            }
            (x, y) => d.push(&part, "(exists)", exists(x), exists(y)),
        }
    }
    let ids: BTreeSet<_> = walking.keys().chain(b.walking.keys()).collect();
    for id in ids {
        let show =
            |v: Option<&metatopia_sim::Vec3>| v.map_or("not walking".into(), |v| v.to_string());
        let (x, y) = (walking.get(id), b.walking.get(id));
        if x != y {
            d.push(&format!("walking {id}"), "vel", show(x), show(y));
        }
    }
    (d.out, d.more)
}

fn exists<T>(x: Option<&T>) -> String {
    if x.is_some() { "present" } else { "absent" }.into()
}

/// A sequence: its length if that differs, and its first differing item.
fn list<'a, T: PartialEq + fmt::Debug + 'a>(
    d: &mut Diffs,
    part: &str,
    a: impl Iterator<Item = &'a T>,
    b: impl Iterator<Item = &'a T>,
    len_a: usize,
    len_b: usize,
) {
    if len_a != len_b {
        d.push(part, "len", len_a.to_string(), len_b.to_string());
    }
    let mut a = a.fuse();
    let mut b = b.fuse();
    for i in 0.. {
        match (a.next(), b.next()) {
            (None, None) => break,
            (x, y) if x == y => {}
            (x, y) => {
                let show = |v: Option<&T>| v.map_or("absent".into(), |v| format!("{v:?}"));
                d.push(part, &format!("[{i}]"), show(x), show(y));
                break;
            }
        }
    }
}

fn diff_settings(d: &mut Diffs, a: &Settings, b: &Settings) {
    macro_rules! fields {
        ($($f:ident),* $(,)?) => {
            // Destructured without `..`: a new setting fails to compile
            // here until it is compared.
            let Settings { $($f),* } = a;
            $( d.cmp("settings", stringify!($f), $f, &b.$f); )*
        };
    }
    fields!(
        name,
        tick_rate_hz,
        temp_admin_absence_days,
        temp_admin_recent_days,
        size,
        spawn,
        elements_max,
        depth_max,
        players_online_max,
        chat_history_max,
        text_bytes_max,
        name_bytes_max,
        inputs_per_player_per_tick_max,
        script_faults_max,
        script_sends_per_tick_max,
        mailbox_max,
        script_inbox_max,
        script_state_bytes_max,
        timers_max,
        script_instructions_max,
        script_memory_bytes_max,
        script_licences,
        walk_speed_max,
    );
}

fn diff_element(d: &mut Diffs, part: &str, a: &Element, b: &Element) {
    let Element {
        id,
        parent,
        kind,
        owner_region,
        owner,
        name,
        pos,
        children,
        script,
        assets,
    } = a;
    d.cmp(part, "id", id, &b.id);
    d.cmp(part, "parent", parent, &b.parent);
    d.cmp(part, "kind", kind, &b.kind);
    d.cmp(part, "owner_region", owner_region, &b.owner_region);
    d.cmp(part, "owner", owner, &b.owner);
    d.cmp(part, "name", name, &b.name);
    d.cmp(part, "pos", pos, &b.pos);
    d.cmp(part, "children", children, &b.children);
    for (field, x, y) in [
        ("assets.mesh", assets.mesh, b.assets.mesh),
        ("assets.texture", assets.texture, b.assets.texture),
    ] {
        if x != y {
            let text = |h: Option<[u8; 32]>| h.map_or("none".into(), |h| metatopia_sim::hex(&h));
            d.push(part, field, text(x), text(y));
        }
    }
    match (script, &b.script) {
        (Some(x), Some(y)) => diff_script(d, part, x, y),
        (None, None) => {}
        (x, y) => d.push(part, "script", exists(x.as_ref()), exists(y.as_ref())),
    }
}

fn diff_script(d: &mut Diffs, part: &str, a: &ScriptSlot, b: &ScriptSlot) {
    let ScriptSlot {
        source,
        state,
        faults,
        suspended,
    } = a;
    if source != &b.source {
        d.push(
            part,
            "script.source",
            metatopia_sim::hex(source),
            metatopia_sim::hex(&b.source),
        );
    }
    d.cmp(part, "script.faults", faults, &b.faults);
    d.cmp(part, "script.suspended", suspended, &b.suspended);
    if state != &b.state {
        // The persistent `state` table, key by key when both decode.
        match (codec::decode(state), codec::decode(&b.state)) {
            (Ok(x), Ok(y)) => diff_data(d, part, "script.state", &x, &y),
            _ => d.push(
                part,
                "script.state",
                format!("{} bytes", state.len()),
                format!("{} bytes", b.state.len()),
            ),
        }
    }
}

fn show_data(v: &Data) -> String {
    match v {
        Data::Bool(b) => b.to_string(),
        Data::Int(i) => i.to_string(),
        Data::Str(s) => format!("{:?}", String::from_utf8_lossy(s)),
        Data::Table(t) => format!("table of {} entries", t.len()),
    }
}

fn key_path(path: &str, k: &Data) -> String {
    match k {
        Data::Str(s) => format!("{path}.{}", String::from_utf8_lossy(s)),
        other => format!("{path}[{}]", show_data(other)),
    }
}

fn diff_data(d: &mut Diffs, part: &str, path: &str, a: &Data, b: &Data) {
    match (a, b) {
        (Data::Table(x), Data::Table(y)) => {
            let keys: Vec<&Data> = {
                let mut k: Vec<&Data> = x.iter().chain(y.iter()).map(|(k, _)| k).collect();
                k.sort_by(|p, q| codec::key_order(p, q));
                k.dedup();
                k
            };
            let get = |t: &'_ [(Data, Data)], k: &Data| {
                t.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone())
            };
            for k in keys {
                let p = key_path(path, k);
                match (get(x, k), get(y, k)) {
                    (Some(u), Some(v)) => diff_data(d, part, &p, &u, &v),
                    (u, v) => d.push(
                        part,
                        &p,
                        u.as_ref().map_or("absent".into(), show_data),
                        v.as_ref().map_or("absent".into(), show_data),
                    ),
                }
            }
        }
        (x, y) if x == y => {}
        (x, y) => d.push(part, path, show_data(x), show_data(y)),
    }
}

fn diff_player(d: &mut Diffs, part: &str, a: &Player, b: &Player) {
    let Player {
        id,
        name,
        first_join_ms,
        last_login_ms,
        last_admin_login_ms,
        role,
        online,
        avatar,
        last_seq,
        moved_to,
    } = a;
    d.cmp(part, "id", id, &b.id);
    d.cmp(part, "name", name, &b.name);
    d.cmp(part, "first_join_ms", first_join_ms, &b.first_join_ms);
    d.cmp(part, "last_login_ms", last_login_ms, &b.last_login_ms);
    d.cmp(
        part,
        "last_admin_login_ms",
        last_admin_login_ms,
        &b.last_admin_login_ms,
    );
    d.cmp(part, "role", role, &b.role);
    d.cmp(part, "online", online, &b.online);
    d.cmp(part, "avatar", avatar, &b.avatar);
    d.cmp(part, "last_seq", last_seq, &b.last_seq);
    d.cmp(part, "moved_to", moved_to, &b.moved_to);
}

/// The first tick at which two traces of `(tick, state hash)` differ:
/// a tick one of them has and the other has not counts, a tick neither
/// has does not. `None` if they agree on every tick.
pub fn first_divergence(a: &[(u64, [u8; 32])], b: &[(u64, [u8; 32])]) -> Option<u64> {
    let ticks: BTreeSet<u64> = a.iter().chain(b).map(|(t, _)| *t).collect();
    let at = |tr: &[(u64, [u8; 32])], t: u64| tr.iter().find(|(u, _)| *u == t).map(|(_, h)| *h);
    ticks.into_iter().find(|t| at(a, *t) != at(b, *t))
}

/// A line of a hash trace that is not `tick T state_hash=HEX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: not `tick T state_hash=HEX`: {text}")]
pub struct TraceError {
    /// The line number, from 1.
    pub line: usize,
    /// The line, quoted and bounded.
    pub text: String,
}

/// Reads a hash trace (`metatopia run --trace`): the lines `tick T
/// state_hash=HEX` (T the tick just run); other lines (the run's
/// summary) are skipped, except a malformed `tick ` line.
pub fn parse_trace(text: &str) -> Result<Vec<(u64, [u8; 32])>, TraceError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix("tick ") else {
            continue;
        };
        // Notices also start with "tick T region": only trace lines have
        // the hash right after the tick.
        let Some((t, h)) = rest.split_once(' ') else {
            continue;
        };
        let Some(h) = h.strip_prefix("state_hash=") else {
            continue;
        };
        let bad = || TraceError {
            line: i + 1,
            text: crate::quote::cap(line, VALUE_CHARS_MAX).into_owned(),
        };
        let t: u64 = t.parse().map_err(|_| bad())?;
        let h = metatopia_sim::unhex32(h).ok_or_else(bad)?;
        out.push((t, h));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use metatopia_sim::state::ElementKind;
    use metatopia_sim::{PlayerId, RegionId, Vec3};

    fn state() -> State {
        let alice = PlayerId::from_name("alice");
        let mut s = State::new(RegionId(1), Settings::default(), &[alice]);
        s.add_child(
            s.root(),
            ElementKind::Object,
            Some(alice),
            "lamp",
            Vec3::from_ints(1, 2, 3),
        )
        .unwrap();
        s
    }

    #[test]
    fn equal_states_have_no_differences() {
        assert_eq!(diff_states(&state(), &state()), (vec![], 0));
    }

    #[test]
    fn a_moved_element_is_named_with_its_field() {
        let a = state();
        let mut b = state();
        let id = metatopia_sim::ElementId::new(1, 1);
        let mut e = b.elements.get(&id).unwrap().clone();
        e.pos = Vec3::from_ints(1, 2, 4);
        b.elements.insert(id, e);
        b.settings.chat_history_max = 7;
        let (d, more) = diff_states(&a, &b);
        assert_eq!(more, 0);
        let lines: Vec<String> = d.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "settings chat_history_max: 200 != 7".to_string(),
                format!(
                    "element 1.1 pos: {:?} != {:?}",
                    Vec3::from_ints(1, 2, 3),
                    Vec3::from_ints(1, 2, 4)
                ),
            ]
        );
    }

    #[test]
    fn traces_diverge_at_the_first_differing_tick() {
        let a = vec![(0, [1; 32]), (1, [2; 32]), (2, [3; 32])];
        let mut b = a.clone();
        assert_eq!(first_divergence(&a, &b), None);
        b[1].1 = [9; 32];
        b[2].1 = [9; 32];
        assert_eq!(first_divergence(&a, &b), Some(1));
        assert_eq!(first_divergence(&a, &a[..2]), Some(2));
        let text = format!(
            "tick 0 region 1: input[0] by alice rejected: x\ntick 4 state_hash={}\ninputs: 1\n",
            metatopia_sim::hex(&[7; 32])
        );
        assert_eq!(parse_trace(&text).unwrap(), vec![(4, [7; 32])]);
        let e = parse_trace("tick x state_hash=00\n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
