//! Step 5: inputs in batch order. Duplicates are dropped, rate limits
//! enforced, refused inputs answered with a `Rejected` event; accepted
//! inputs change the state and may queue script events.

use std::collections::BTreeMap;

use crate::fx::{Fx, Vec3};
use crate::id::{ElementId, PlayerId};
use crate::input::{Event, Input, InputKind, Rejection};
use crate::physics::{self, Refusal};
use crate::remote::{Outbound, Remote};
use crate::script::ScriptEventKind;
use crate::state::{Assets, ElementKind, Player, Role, ScriptSlot, Speaker};

use super::{Work, check_text, online_avatar};

impl Work<'_> {
    /// Step 5.
    pub(super) fn apply_inputs(&mut self, inputs: &[Input]) {
        let per_player_max = self.state.settings.inputs_per_player_per_tick_max;
        // Per sender this tick: (inputs counted, highest sequence number).
        // Sequence numbers are written back once per player at the end.
        let mut seen: BTreeMap<PlayerId, (u32, u64)> = BTreeMap::new();
        for input in inputs {
            let stored = self
                .state
                .players
                .get(&input.player)
                .map_or(0, |p| p.last_seq);
            let (count, max_seq) = seen.entry(input.player).or_insert((0, stored));
            if self.state.players.contains_key(&input.player) && input.seq <= *max_seq {
                self.report.duplicates += 1;
                continue;
            }
            *count += 1;
            *max_seq = input.seq;
            let result = if *count > per_player_max {
                Err(Rejection::RateLimited(per_player_max))
            } else {
                self.apply_input(input)
            };
            match result {
                Ok(()) => {
                    self.report.accepted += 1;
                    if matches!(input.kind, InputKind::Join { .. } | InputKind::Admin(_)) {
                        self.update_temp_admin();
                    }
                }
                Err(reason) => {
                    self.report.rejected += 1;
                    self.report.events.push(Event::Rejected {
                        player: input.player,
                        seq: input.seq,
                        reason,
                    });
                }
            }
        }
        for (player, (_, max_seq)) in seen {
            if self
                .state
                .players
                .get(&player)
                .is_some_and(|p| p.last_seq < max_seq)
            {
                self.state.players.update(&player, |p| p.last_seq = max_seq);
            }
        }
    }

    /// One input that is not a duplicate nor over the rate limit.
    fn apply_input(&mut self, input: &Input) -> Result<(), Rejection> {
        let who = input.player;
        match &input.kind {
            InputKind::Join { name } => self.join(who, name),
            InputKind::Leave => {
                online_avatar(self.state, who)?;
                self.leave(who);
                Ok(())
            }
            InputKind::Move { element, to } => self.move_input(who, *element, *to),
            InputKind::Say { text, radius } => self.say_input(who, text, *radius),
            InputKind::Touch { element } => self.touch(who, *element),
            InputKind::Reparent { element, parent } => {
                online_avatar(self.state, who)?;
                self.reparent(who, *element, *parent)
            }
            InputKind::Create { parent, name, pos } => {
                online_avatar(self.state, who)?;
                self.create(who, *parent, name, *pos).map(|_| ())
            }
            InputKind::Delete { element } => self.delete_input(who, *element),
            InputKind::AttachScript { element, source } => {
                self.attach_script(who, *element, *source)
            }
            InputKind::DetachScript { element } => self.detach_script(who, *element),
            InputKind::Admin(action) => {
                if !self.state.is_admin(who) {
                    return Err(Rejection::Permission("admins only".into()));
                }
                self.admin(who, action)
            }
            InputKind::SpawnBody {
                parent,
                name,
                pos,
                body,
                vel,
            } => {
                online_avatar(self.state, who)?;
                self.spawn_body(who, *parent, name, *pos, *body, *vel)
            }
            InputKind::Push { element, impulse } => self.push(who, *element, *impulse),
            InputKind::SetVelocity { element, vel } => self.set_velocity(who, *element, *vel),
            InputKind::SetAssets {
                element,
                mesh,
                texture,
            } => self.set_assets(
                who,
                *element,
                Assets {
                    mesh: *mesh,
                    texture: *texture,
                },
            ),
            InputKind::Walk { vel } => self.walk_input(who, *vel),
        }
    }

    fn move_input(&mut self, who: PlayerId, element: ElementId, to: Vec3) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let e = self.element(element)?;
        if e.kind == ElementKind::Region {
            return Err(Rejection::Invalid("the region root cannot move".into()));
        }
        self.check_owner(who, e.owner, "move")?;
        if e.kind == ElementKind::Avatar {
            self.place_avatar(element, to)?;
        } else {
            self.move_subtree(element, to)?;
        }
        // Placed by hand: a walking avatar stops.
        self.state.walking.remove(&element);
        Ok(())
    }

    fn say_input(
        &mut self,
        who: PlayerId,
        text: &str,
        radius: Option<Fx>,
    ) -> Result<(), Rejection> {
        let avatar = online_avatar(self.state, who)?;
        check_text(text, self.state.settings.text_bytes_max, "chat line")?;
        if radius.is_some_and(|r| r <= Fx::ZERO) {
            return Err(Rejection::OutOfBounds(
                "chat radius must be positive".into(),
            ));
        }
        let pos = self.element(avatar)?.pos;
        if let Some(r) = radius {
            self.report.remote.push(Outbound {
                to: None,
                item: Remote::Chat {
                    from: Speaker::Player(who),
                    pos,
                    radius: r,
                    text: text.to_string(),
                },
            });
        }
        self.say(Speaker::Player(who), pos, radius, text.to_string(), None);
        Ok(())
    }

    /// The touched element's script hears it, or its nearest scripted
    /// ancestor's; touching unscripted things does nothing.
    fn touch(&mut self, who: PlayerId, element: ElementId) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        self.element(element)?;
        let mut cur = Some(element);
        while let Some(id) = cur {
            let e = self.element(id)?;
            if e.script.is_some() {
                let ev = self.new_event_id();
                self.push_event(id, ev, ScriptEventKind::Touched { by: who, element });
                break;
            }
            cur = e.parent;
        }
        Ok(())
    }

    fn delete_input(&mut self, who: PlayerId, element: ElementId) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let e = self.element(element)?;
        match e.kind {
            ElementKind::Region => {
                return Err(Rejection::Invalid(
                    "the region root cannot be deleted".into(),
                ));
            }
            ElementKind::Avatar => {
                return Err(Rejection::Invalid(
                    "avatars leave, they are not deleted".into(),
                ));
            }
            _ => {}
        }
        self.check_owner(who, e.owner, "delete")?;
        self.delete_subtree(element);
        Ok(())
    }

    fn attach_script(
        &mut self,
        who: PlayerId,
        element: ElementId,
        source: [u8; 32],
    ) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let e = self.element(element)?;
        if e.kind == ElementKind::Region && !self.state.is_admin(who) {
            return Err(Rejection::Permission(
                "only admins script the region root".into(),
            ));
        }
        self.check_owner(who, e.owner, "script")?;
        let slot = match &e.script {
            // Hot reload: the persistent state is kept.
            Some(old) => ScriptSlot {
                source,
                state: old.state.clone(),
                faults: 0,
                suspended: false,
            },
            None => ScriptSlot {
                source,
                state: Vec::new(),
                faults: 0,
                suspended: false,
            },
        };
        self.state.elements.update(&element, |e| {
            e.script = Some(slot);
        });
        self.state.scripted.insert(element);
        Ok(())
    }

    fn detach_script(&mut self, who: PlayerId, element: ElementId) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let e = self.element(element)?;
        self.check_owner(who, e.owner, "unscript")?;
        if e.script.is_none() {
            return Err(Rejection::Invalid(format!(
                "element {element} has no script"
            )));
        }
        self.state.elements.update(&element, |e| {
            e.script = None;
        });
        self.state.scripted.remove(&element);
        Ok(())
    }

    /// An impulse for this tick's physics step (also for a body handed
    /// to another region recently, which is forwarded there).
    fn push(&mut self, who: PlayerId, element: ElementId, impulse: Vec3) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        if self.forwarded_owner(element).is_none() {
            self.body(element)?;
        }
        self.report.physics.push(physics::Command::Impulse {
            id: element,
            impulse,
        });
        Ok(())
    }

    fn set_velocity(
        &mut self,
        who: PlayerId,
        element: ElementId,
        vel: Vec3,
    ) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let owner = match self.forwarded_owner(element) {
            Some(owner) => owner,
            None => {
                self.body(element)?;
                self.element(element)?.owner
            }
        };
        self.check_owner(who, owner, "set the velocity of")?;
        self.report
            .physics
            .push(physics::Command::SetVelocity { id: element, vel });
        Ok(())
    }

    fn set_assets(
        &mut self,
        who: PlayerId,
        element: ElementId,
        assets: Assets,
    ) -> Result<(), Rejection> {
        online_avatar(self.state, who)?;
        let e = self.element(element)?;
        if e.kind == ElementKind::Region {
            return Err(Rejection::Invalid("the region root shows no assets".into()));
        }
        self.check_owner(who, e.owner, "set the assets of")?;
        self.state.elements.update(&element, |e| e.assets = assets);
        Ok(())
    }

    pub(super) fn join(&mut self, who: PlayerId, name: &str) -> Result<(), Rejection> {
        super::admits(self.state, who).map_err(|r| match r {
            Refusal::Banned => Rejection::Banned,
            Refusal::Full(max) => Rejection::RegionFull(max),
            _ => Rejection::AlreadyJoined,
        })?;
        check_text(name, self.state.settings.name_bytes_max, "name")?;
        let spawn = self.state.settings.spawn;
        let root = self.state.root();
        let avatar = self
            .state
            .add_child(root, ElementKind::Avatar, Some(who), name, spawn)?;
        let now = self.state.time_ms;
        let mut player = self
            .state
            .players
            .get(&who)
            .cloned()
            .unwrap_or(Player::unseen(who, Role::Member));
        player.name = name.to_string();
        player.first_join_ms.get_or_insert(now);
        player.last_login_ms = Some(now);
        if player.role == Role::Admin {
            player.last_admin_login_ms = Some(now);
        }
        player.online = true;
        player.avatar = Some(avatar);
        player.moved_to = None;
        self.state.players.insert(who, player);
        self.report.events.push(Event::Joined { player: who });
        self.broadcast(ScriptEventKind::Entered { player: who });
        Ok(())
    }

    pub(super) fn leave(&mut self, who: PlayerId) {
        let avatar = self.state.players.get(&who).and_then(|p| p.avatar);
        if let Some(avatar) = avatar {
            self.delete_subtree(avatar);
        }
        self.state.players.update(&who, |p| {
            p.online = false;
            p.avatar = None;
        });
        self.report.events.push(Event::Left { player: who });
        self.broadcast(ScriptEventKind::Left { player: who });
    }

    pub(super) fn create(
        &mut self,
        who: PlayerId,
        parent: Option<ElementId>,
        name: &str,
        pos: Vec3,
    ) -> Result<ElementId, Rejection> {
        check_text(name, self.state.settings.name_bytes_max, "name")?;
        let root = self.state.root();
        let parent = parent.unwrap_or(root);
        let p = self.element(parent)?;
        if parent != root {
            if p.kind == ElementKind::Avatar && p.owner != Some(who) {
                return Err(Rejection::Permission(
                    "only the avatar's player may attach to it".into(),
                ));
            }
            self.check_owner(who, p.owner, "add parts to")?;
        }
        let kind = if parent == root {
            ElementKind::Object
        } else {
            ElementKind::Part
        };
        self.state.add_child(parent, kind, Some(who), name, pos)
    }

    /// Moves an element to `to`, and its subtree by the same offset.
    /// Every element must stay inside the region (an avatar goes through
    /// [`Work::place_avatar`] instead, which may take it over a border).
    pub(super) fn move_subtree(&mut self, element: ElementId, to: Vec3) -> Result<(), Rejection> {
        let moved = self.plan_move(element, to, false)?;
        self.apply_moves(moved);
        Ok(())
    }

    pub(super) fn delete_subtree(&mut self, element: ElementId) {
        let parent = self.state.elements.get(&element).and_then(|e| e.parent);
        for id in self.state.subtree(element) {
            self.state.elements.remove(&id);
            self.state.scripted.remove(&id);
            self.state.walking.remove(&id);
            if self.state.bodies.remove(&id).is_some() {
                self.report.physics.push(physics::Command::Remove { id });
            }
        }
        if let Some(parent) = parent {
            self.state
                .elements
                .update(&parent, |p| p.children.retain(|c| *c != element));
        }
    }

    pub(super) fn reparent(
        &mut self,
        who: PlayerId,
        element: ElementId,
        parent: ElementId,
    ) -> Result<(), Rejection> {
        let e = self.element(element)?;
        match e.kind {
            ElementKind::Region => {
                return Err(Rejection::Invalid("the region root has no parent".into()));
            }
            ElementKind::Avatar => {
                return Err(Rejection::Invalid("avatars cannot be reparented".into()));
            }
            _ => {}
        }
        self.check_owner(who, e.owner, "reparent")?;
        let old_parent = e.parent;
        let p = self.element(parent)?;
        let root = self.state.root();
        if parent != root {
            if p.kind == ElementKind::Avatar && p.owner != Some(who) {
                return Err(Rejection::Permission(
                    "only the avatar's player may attach to it".into(),
                ));
            }
            self.check_owner(who, p.owner, "attach to")?;
        }
        if self.state.is_within(parent, element) {
            return Err(Rejection::Invalid(format!(
                "{parent} is inside {element}: the hierarchy would have a cycle"
            )));
        }
        let depth_max = self.state.settings.depth_max;
        if self.state.depth(parent) + 1 + self.state.subtree_height(element) > depth_max {
            return Err(Rejection::OutOfBounds(format!(
                "hierarchy would be deeper than {depth_max}"
            )));
        }
        if old_parent == Some(parent) {
            return Ok(());
        }
        if let Some(old) = old_parent {
            self.state
                .elements
                .update(&old, |op| op.children.retain(|c| *c != element));
        }
        self.state.elements.update(&parent, |np| {
            let at = np.children.binary_search(&element).unwrap_or_else(|i| i);
            np.children.insert(at, element);
        });
        self.state.elements.update(&element, |e| {
            e.parent = Some(parent);
            e.kind = if parent == root {
                ElementKind::Object
            } else {
                ElementKind::Part
            };
        });
        Ok(())
    }
}
