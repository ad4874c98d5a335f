//! The temp-admin rule, on the seed's own example and its corners.
//!
//! Seed: "If the admin hasn't logged in in the past X days promote the
//! oldest player that has logged in in the past Y days to temp admin ...
//! at day X+9 Charlie logs on who has been a player longer than Bob.
//! Charlie is now the temp admin."

#![allow(clippy::unwrap_used)]

use metatopia_sim::input::{AdminAction, Event, InputKind};
use metatopia_sim::state::{DAY_MS, Role, Settings, State};
use metatopia_sim::testing::Driver;
use metatopia_sim::{NoScripts, PlayerId, RegionId, admin};

const ADMIN: PlayerId = PlayerId::from_byte(0xA0);
const CHARLIE: PlayerId = PlayerId::from_byte(0xC0);
const BOB: PlayerId = PlayerId::from_byte(0xB0);
const DAVE: PlayerId = PlayerId::from_byte(0xD0);

const X: u32 = 30;
const Y: u32 = 7;

/// A region with X = 30, Y = 7 and one founder admin.
fn region() -> Driver {
    let settings = Settings {
        temp_admin_absence_days: X,
        temp_admin_recent_days: Y,
        ..Settings::default()
    };
    Driver::new(State::new(RegionId(1), settings, &[ADMIN]))
}

/// Moves sim time to `day` (plus `ms`) and runs one tick with `inputs`.
fn at(d: &mut Driver, day: u64, inputs: Vec<(PlayerId, InputKind)>) -> Vec<Event> {
    d.time_ms = d.time_ms.max(day * DAY_MS);
    d.tick(&NoScripts, inputs).events
}

/// Logs a player in and straight out again.
fn visit(d: &mut Driver, day: u64, who: PlayerId) {
    at(
        d,
        day,
        vec![(
            who,
            InputKind::Join {
                name: format!("{who:?}"),
            },
        )],
    );
    d.tick(&NoScripts, vec![(who, InputKind::Leave)]);
}

fn temp(d: &Driver) -> Option<PlayerId> {
    d.sim.state().temp_admin
}

#[test]
fn seed_example_bob_then_charlie() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, CHARLIE); // Charlie is the older player.
    visit(&mut d, 2, BOB);
    assert_eq!(temp(&d), None, "the admin logged in recently");
    // Day X+1: the admin's last login (day 0) is more than X days ago. Bob
    // logs in; Charlie's last login (day 1) is not within Y days.
    visit(&mut d, u64::from(X) + 1, BOB);
    assert_eq!(temp(&d), Some(BOB));
    // Bob stays temp admin while he keeps logging in and Charlie stays away.
    visit(&mut d, u64::from(X) + 5, BOB);
    assert_eq!(temp(&d), Some(BOB));
    // Day X+9: Charlie, a player for longer than Bob, logs in and takes over.
    let events = at(
        &mut d,
        u64::from(X) + 9,
        vec![(
            CHARLIE,
            InputKind::Join {
                name: "Charlie".into(),
            },
        )],
    );
    assert_eq!(temp(&d), Some(CHARLIE));
    assert!(events.contains(&Event::TempAdmin {
        player: Some(CHARLIE)
    }));
}

#[test]
fn ties_go_to_the_lower_player_id() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    // Bob and Dave first join in the same tick (the same sim time).
    at(
        &mut d,
        1,
        vec![
            (
                DAVE,
                InputKind::Join {
                    name: "Dave".into(),
                },
            ),
            (BOB, InputKind::Join { name: "Bob".into() }),
        ],
    );
    at(&mut d, u64::from(X) + 1, vec![]);
    assert_eq!(temp(&d), None, "nobody logged in within Y days");
    at(
        &mut d,
        u64::from(X) + 2,
        vec![(DAVE, InputKind::Leave), (BOB, InputKind::Leave)],
    );
    visit(&mut d, u64::from(X) + 3, DAVE);
    visit(&mut d, u64::from(X) + 3, BOB);
    assert!(BOB < DAVE);
    assert_eq!(temp(&d), Some(BOB));
}

#[test]
fn admin_coming_back_ends_the_temp_admin() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, BOB);
    visit(&mut d, u64::from(X) + 2, BOB);
    assert_eq!(temp(&d), Some(BOB));
    let events = at(
        &mut d,
        u64::from(X) + 3,
        vec![(
            ADMIN,
            InputKind::Join {
                name: "Admin".into(),
            },
        )],
    );
    assert_eq!(temp(&d), None);
    assert!(events.contains(&Event::TempAdmin { player: None }));
}

#[test]
fn temp_admin_going_inactive_passes_it_on_or_ends_it() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, BOB);
    visit(&mut d, 2, DAVE);
    visit(&mut d, u64::from(X) + 2, BOB);
    visit(&mut d, u64::from(X) + 4, DAVE);
    assert_eq!(temp(&d), Some(BOB));
    // More than Y days after Bob's last login: Dave (logged in at X+4) is next.
    at(&mut d, u64::from(X) + 2 + u64::from(Y) + 1, vec![]);
    assert_eq!(temp(&d), Some(DAVE));
    // And when Dave goes quiet too, there is none.
    at(&mut d, u64::from(X) + 4 + u64::from(Y) + 1, vec![]);
    assert_eq!(temp(&d), None);
}

/// Runs empty ticks until sim time `ms` (the next tick is at `ms`).
fn until(d: &mut Driver, ms: u64) {
    d.time_ms = ms;
    d.tick(&NoScripts, vec![]);
}

#[test]
fn explanation_predicts_when_the_role_passes_on_and_ends() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    let admin_login = d
        .sim
        .state()
        .players
        .get(&ADMIN)
        .unwrap()
        .last_admin_login_ms;
    visit(&mut d, 1, BOB);
    visit(&mut d, 2, DAVE);
    // The admin is present: no temp admin, and none will come without a
    // login (nobody will have logged in recently when the admin's window ends).
    let e = admin::explain(d.sim.state());
    assert_eq!(e.temp_admin, None);
    assert_eq!(
        e.last_admin_login,
        Some(admin::Login {
            player: ADMIN,
            at_ms: admin_login.unwrap(),
        })
    );
    assert_eq!(e.next_change, None);

    visit(&mut d, u64::from(X) + 2, BOB);
    visit(&mut d, u64::from(X) + 4, DAVE);
    let e = admin::explain(d.sim.state());
    assert_eq!(e.temp_admin, Some(BOB));
    assert_eq!(e.last_admin_login.map(|l| l.player), Some(ADMIN));
    let bob_login = d
        .sim
        .state()
        .players
        .get(&BOB)
        .unwrap()
        .last_login_ms
        .unwrap();
    let change = e.next_change.unwrap();
    assert_eq!(change.at_ms, bob_login + u64::from(Y) * DAY_MS + 1);
    assert_eq!(change.temp_admin, Some(DAVE), "the role passes on to Dave");
    // One ms before, Bob still holds it; at that instant, Dave.
    until(&mut d, change.at_ms - 1);
    assert_eq!(temp(&d), Some(BOB));
    until(&mut d, change.at_ms);
    assert_eq!(temp(&d), Some(DAVE));

    let change = admin::explain(d.sim.state()).next_change.unwrap();
    assert_eq!(change.temp_admin, None, "then the role ends");
    until(&mut d, change.at_ms - 1);
    assert_eq!(temp(&d), Some(DAVE));
    until(&mut d, change.at_ms);
    assert_eq!(temp(&d), None);
    assert_eq!(admin::explain(d.sim.state()).next_change, None);
}

#[test]
fn explanation_names_when_a_temp_admin_will_be_needed() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    // Bob keeps logging in; the admin does not come back.
    visit(&mut d, u64::from(X) - 1, BOB);
    let e = admin::explain(d.sim.state());
    let admin_login = e.last_admin_login.unwrap().at_ms;
    let change = e.next_change.unwrap();
    assert_eq!(change.at_ms, admin_login + u64::from(X) * DAY_MS + 1);
    assert_eq!(change.temp_admin, Some(BOB));
    until(&mut d, change.at_ms - 1);
    assert_eq!(temp(&d), None);
    until(&mut d, change.at_ms);
    assert_eq!(temp(&d), Some(BOB));
}

#[test]
fn temp_admin_can_act_and_make_itself_permanent() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, BOB);
    visit(&mut d, 1, DAVE);
    at(
        &mut d,
        u64::from(X) + 2,
        vec![(BOB, InputKind::Join { name: "Bob".into() })],
    );
    assert_eq!(temp(&d), Some(BOB));
    // Bob may do what a permanent admin may: ban Dave ...
    let r = d.tick(
        &NoScripts,
        vec![(BOB, InputKind::Admin(AdminAction::Ban { player: DAVE }))],
    );
    assert_eq!(r.rejected, 0);
    assert!(d.sim.state().banned.contains(&DAVE));
    // ... and make himself permanent. Being made admin while online counts
    // as an admin login, so there is no temp admin any more.
    d.tick(
        &NoScripts,
        vec![(BOB, InputKind::Admin(AdminAction::Grant { player: BOB }))],
    );
    assert_eq!(d.sim.state().players[&BOB].role, Role::Admin);
    assert_eq!(temp(&d), None);
}

#[test]
fn temp_admin_logins_do_not_count_as_admin_logins() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, BOB);
    visit(&mut d, u64::from(X) + 2, BOB);
    assert_eq!(temp(&d), Some(BOB));
    // Bob's login as temp admin left the admin clock alone.
    assert_eq!(d.sim.state().players[&BOB].last_admin_login_ms, None);
    assert_eq!(d.sim.state().players[&ADMIN].last_admin_login_ms, Some(0));
    visit(&mut d, u64::from(X) + 6, BOB);
    assert_eq!(temp(&d), Some(BOB));
}

#[test]
fn non_admins_cannot_act_and_rule_is_inclusive_at_x_days() {
    let mut d = region();
    visit(&mut d, 0, ADMIN);
    visit(&mut d, 1, BOB);
    // Exactly X days after the admin's login: still "within X days".
    d.tick_ms = 0;
    at(
        &mut d,
        u64::from(X),
        vec![(BOB, InputKind::Join { name: "Bob".into() })],
    );
    assert_eq!(temp(&d), None);
    let r = d.tick(
        &NoScripts,
        vec![(BOB, InputKind::Admin(AdminAction::Kick { player: ADMIN }))],
    );
    assert_eq!(r.rejected, 1);
    // One millisecond later the admin is absent and Bob takes over.
    d.time_ms = u64::from(X) * DAY_MS + 1;
    d.tick(&NoScripts, vec![]);
    assert_eq!(temp(&d), Some(BOB));
}
