//! Actions: the human-facing form of inputs, shared by the HTTP API, the
//! CLI and scenario files.
//!
//! An action is a table tagged by `do`, with numbers as decimal text (they
//! become fixed point exactly, never through a float) and references to
//! elements and players as text: `{"do": "move", "element": "1.5", "to":
//! "10,20,0"}`. Scenario files may also name elements `@key` and players by
//! name; the [`Resolve`] trait supplies those lookups.

use serde::{Deserialize, Serialize};

use metatopia_sim::input::{AdminAction, InputKind, SettingsPatch};
use metatopia_sim::physics::{BodyKind, BodySpec, Material, Shape};
use metatopia_sim::{ElementId, Fx, PlayerId, Vec3};

/// An action, as written by people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Enter the region.
    Join {
        /// Display name.
        name: String,
    },
    /// Leave the region.
    Leave,
    /// Move an element (`to` is `"x,y,z"`).
    Move {
        /// Element id (`"1.5"`) or `@key`; `"me"` is your avatar.
        element: String,
        /// Destination, `"x,y,z"`.
        to: String,
    },
    /// Chat.
    Say {
        /// The line.
        text: String,
        /// Hearing radius in metres (decimal text); absent: the whole region.
        #[serde(default)]
        radius: Option<String>,
    },
    /// Touch an element.
    Touch {
        /// Element id or `@key`.
        element: String,
    },
    /// Move an element under a new parent.
    Reparent {
        /// Element id or `@key`.
        element: String,
        /// New parent id or `@key`.
        parent: String,
    },
    /// Create an object (or a part, with `parent`).
    Create {
        /// Display name.
        name: String,
        /// Position, `"x,y,z"`.
        pos: String,
        /// Parent id or `@key`; absent: the region root.
        #[serde(default)]
        parent: Option<String>,
    },
    /// Delete an element and its subtree.
    Delete {
        /// Element id or `@key`.
        element: String,
    },
    /// Attach a script (hot reload if one is attached: its state is kept).
    Attach {
        /// Element id or `@key`.
        element: String,
        /// The script: its hash (64 hex digits) or a scenario's `@key`.
        script: String,
    },
    /// Remove an element's script.
    Detach {
        /// Element id or `@key`.
        element: String,
    },
    /// Create an object with a physics body (or a part, with `parent`).
    SpawnBody {
        /// Display name.
        name: String,
        /// Centre, `"x,y,z"`.
        pos: String,
        /// `"ball:R"` or `"box:HX,HY,HZ"` (metres).
        shape: String,
        /// `dynamic` (default), `kinematic` or `fixed`.
        #[serde(default)]
        kind: Option<String>,
        /// Initial velocity, `"x,y,z"` m/s; default zero.
        #[serde(default)]
        vel: Option<String>,
        /// Density, kg/m³; default 1.
        #[serde(default)]
        density: Option<String>,
        /// Friction, `0..=10`; default 0.5.
        #[serde(default)]
        friction: Option<String>,
        /// Restitution, `0..=1`; default 0.5.
        #[serde(default)]
        restitution: Option<String>,
        /// Parent id or `@key`; absent: the region root.
        #[serde(default)]
        parent: Option<String>,
    },
    /// Push a body: an impulse (N·s, `"x,y,z"`) at its centre.
    Push {
        /// Element id or `@key`.
        element: String,
        /// The impulse, `"x,y,z"`.
        impulse: String,
    },
    /// Set a body's velocity (`"x,y,z"` m/s).
    SetVelocity {
        /// Element id or `@key`.
        element: String,
        /// The velocity, `"x,y,z"`.
        vel: String,
    },
    /// Set the assets an element shows: each reference is a blob's hash
    /// (64 hex digits, e.g. from `PUT /api/assets`); an absent one clears
    /// that reference.
    SetAssets {
        /// Element id or `@key`.
        element: String,
        /// Its mesh's hash.
        #[serde(default)]
        mesh: Option<String>,
        /// Its texture's hash.
        #[serde(default)]
        texture: Option<String>,
    },
    /// Walk: set your avatar's velocity (`"x,y,z"` m/s) until told
    /// otherwise; `"0,0,0"` stops. The sim moves it every tick.
    Walk {
        /// The velocity, `"x,y,z"`.
        vel: String,
    },
    /// Make a player a permanent admin.
    Grant {
        /// Player key (64 hex digits) or scenario name.
        player: String,
    },
    /// Take permanent admin away.
    Revoke {
        /// Player.
        player: String,
    },
    /// Remove a player from the region.
    Kick {
        /// Player.
        player: String,
    },
    /// Remove a player and refuse their joins.
    Ban {
        /// Player.
        player: String,
    },
    /// Lift a ban.
    Unban {
        /// Player.
        player: String,
    },
    /// Change region settings.
    Settings {
        /// Region name.
        #[serde(default)]
        name: Option<String>,
        /// Temp-admin X, days.
        #[serde(default)]
        temp_admin_absence_days: Option<u32>,
        /// Temp-admin Y, days.
        #[serde(default)]
        temp_admin_recent_days: Option<u32>,
        /// Spawn point, `"x,y,z"`.
        #[serde(default)]
        spawn: Option<String>,
        /// Most elements.
        #[serde(default)]
        elements_max: Option<u32>,
        /// Most players online.
        #[serde(default)]
        players_online_max: Option<u32>,
        /// Chat history length.
        #[serde(default)]
        chat_history_max: Option<u32>,
        /// Longest chat line, bytes.
        #[serde(default)]
        text_bytes_max: Option<u32>,
        /// VM instructions per script handler.
        #[serde(default)]
        script_instructions_max: Option<u32>,
        /// Bytes of live Lua data per script call.
        #[serde(default)]
        script_memory_bytes_max: Option<u32>,
        /// Accepted SPDX licence identifiers for scripts.
        #[serde(default)]
        script_licences: Option<Vec<String>>,
        /// Fastest walk, m/s (decimal text).
        #[serde(default)]
        walk_speed_max: Option<String>,
    },
}

/// Why an action cannot become an input. `field` names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ActionError {
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Lookups for references that are not plain ids.
pub trait Resolve {
    /// An element named `@key` (the text after `@`).
    fn element_key(&self, key: &str) -> Option<ElementId>;
    /// A player by name.
    fn player_name(&self, name: &str) -> Option<PlayerId>;
    /// The acting player's avatar, for `"me"`.
    fn my_avatar(&self) -> Option<ElementId>;
    /// A script by scenario key (the text after `@`).
    fn script_key(&self, _key: &str) -> Option<[u8; 32]> {
        None
    }
}

/// No keys or names: ids only (the HTTP API), plus `"me"`.
#[derive(Debug, Clone, Copy)]
pub struct IdsOnly {
    /// The acting player's avatar.
    pub avatar: Option<ElementId>,
}

impl Resolve for IdsOnly {
    fn element_key(&self, _key: &str) -> Option<ElementId> {
        None
    }

    fn player_name(&self, _name: &str) -> Option<PlayerId> {
        None
    }

    fn my_avatar(&self) -> Option<ElementId> {
        self.avatar
    }
}

fn err(field: &str, message: impl Into<String>) -> ActionError {
    ActionError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn element(field: &str, text: &str, r: &dyn Resolve) -> Result<ElementId, ActionError> {
    if text == "me" {
        return r
            .my_avatar()
            .ok_or_else(|| err(field, "\"me\" is your avatar, but you have not joined"));
    }
    if let Some(key) = text.strip_prefix('@') {
        return r
            .element_key(key)
            .ok_or_else(|| err(field, format!("no object with key {key:?}")));
    }
    text.parse().map_err(|e| err(field, format!("{e}")))
}

fn player(field: &str, text: &str, r: &dyn Resolve) -> Result<PlayerId, ActionError> {
    if let Ok(id) = text.parse::<PlayerId>() {
        return Ok(id);
    }
    r.player_name(text).ok_or_else(|| {
        err(
            field,
            format!("{text:?} is neither a player key (64 hex digits) nor a known player name"),
        )
    })
}

fn script(field: &str, text: &str, r: &dyn Resolve) -> Result<[u8; 32], ActionError> {
    if let Some(key) = text.strip_prefix('@') {
        return r
            .script_key(key)
            .ok_or_else(|| err(field, format!("no [[script]] with key {key:?}")));
    }
    let bad = || {
        err(
            field,
            format!("{text:?} is not a script hash (64 hex digits) or @key"),
        )
    };
    if text.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = text
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(bad)?;
    }
    Ok(out)
}

/// An asset's hash: 64 hex digits.
fn asset(field: &str, text: &str) -> Result<[u8; 32], ActionError> {
    metatopia_sim::unhex32(text).ok_or_else(|| {
        err(
            field,
            format!("{text:?} is not an asset hash (64 hex digits, as PUT /api/assets answers)"),
        )
    })
}

fn vec3(field: &str, text: &str) -> Result<Vec3, ActionError> {
    text.parse().map_err(|e| err(field, format!("{e}")))
}

fn fx(field: &str, text: &str) -> Result<Fx, ActionError> {
    text.parse().map_err(|e| err(field, format!("{e}")))
}

/// A body shape: `"ball:R"` or `"box:HX,HY,HZ"`.
pub fn body_shape(field: &str, text: &str) -> Result<Shape, ActionError> {
    if let Some(r) = text.strip_prefix("ball:") {
        return Ok(Shape::Ball {
            radius: fx(field, r)?,
        });
    }
    if let Some(h) = text.strip_prefix("box:") {
        return Ok(Shape::Cuboid {
            half: vec3(field, h)?,
        });
    }
    Err(err(
        field,
        format!("{text:?}: expected ball:R or box:HX,HY,HZ"),
    ))
}

/// The text of a body's fields, as the `spawn_body` action and a physics
/// scene's `[[physics.body]]` both write them: one format.
#[derive(Debug, Clone, Copy)]
pub struct BodyText<'a> {
    /// `"ball:R"` or `"box:HX,HY,HZ"` (metres).
    pub shape: &'a str,
    /// `dynamic` (default), `kinematic`, `fixed`, or `seated:OX,OY,OZ`
    /// (riding its parent body at that offset from its centre, metres).
    pub kind: Option<&'a str>,
    /// Density, kg/m³; default 1.
    pub density: Option<&'a str>,
    /// Friction, `0..=10`; default 0.5.
    pub friction: Option<&'a str>,
    /// Restitution, `0..=1`; default 0.5.
    pub restitution: Option<&'a str>,
}

/// The body a [`BodyText`] describes; `field` names a field for errors.
/// Ranges are not checked here (the sim checks them, `BodySpec::valid`).
pub fn body_spec(
    t: &BodyText<'_>,
    field: impl Fn(&str) -> String,
) -> Result<BodySpec, ActionError> {
    let m = Material::default();
    let opt =
        |name: &str, v: Option<&str>, default: Fx| v.map_or(Ok(default), |t| fx(&field(name), t));
    Ok(BodySpec {
        kind: body_kind(&field("kind"), t.kind.unwrap_or("dynamic"))?,
        shape: body_shape(&field("shape"), t.shape)?,
        material: Material {
            density: opt("density", t.density, m.density)?,
            friction: opt("friction", t.friction, m.friction)?,
            restitution: opt("restitution", t.restitution, m.restitution)?,
        },
    })
}

/// A body kind: `dynamic`, `kinematic`, `fixed` or `seated:OX,OY,OZ`
/// (a passenger riding its parent body at that offset, metres).
pub fn body_kind(field: &str, text: &str) -> Result<BodyKind, ActionError> {
    match text {
        "dynamic" => Ok(BodyKind::Dynamic),
        "kinematic" => Ok(BodyKind::Kinematic),
        "fixed" => Ok(BodyKind::Fixed),
        other => match other.strip_prefix("seated:") {
            Some(offset) => Ok(BodyKind::Seated {
                offset: vec3(field, offset)?,
            }),
            None => Err(err(
                field,
                format!(
                    "{:?}: expected dynamic, kinematic, fixed or seated:OX,OY,OZ",
                    crate::quote::cap(other, crate::quote::QUOTE_CHARS_MAX)
                ),
            )),
        },
    }
}

impl Action {
    /// The input this action asks for.
    ///
    /// Long on purpose: one short arm per action (the whole action → input table in one place).
    pub fn to_input(&self, r: &dyn Resolve) -> Result<InputKind, ActionError> {
        Ok(match self {
            Action::Join { name } => InputKind::Join { name: name.clone() },
            Action::Leave => InputKind::Leave,
            Action::Move { element: e, to } => InputKind::Move {
                element: element("element", e, r)?,
                to: vec3("to", to)?,
            },
            Action::Say { text, radius } => InputKind::Say {
                text: text.clone(),
                radius: radius.as_deref().map(|t| fx("radius", t)).transpose()?,
            },
            Action::Touch { element: e } => InputKind::Touch {
                element: element("element", e, r)?,
            },
            Action::Reparent { element: e, parent } => InputKind::Reparent {
                element: element("element", e, r)?,
                parent: element("parent", parent, r)?,
            },
            Action::Create { name, pos, parent } => InputKind::Create {
                parent: parent
                    .as_deref()
                    .map(|p| element("parent", p, r))
                    .transpose()?,
                name: name.clone(),
                pos: vec3("pos", pos)?,
            },
            Action::Delete { element: e } => InputKind::Delete {
                element: element("element", e, r)?,
            },
            Action::Attach {
                element: e,
                script: s,
            } => InputKind::AttachScript {
                element: element("element", e, r)?,
                source: script("script", s, r)?,
            },
            Action::Detach { element: e } => InputKind::DetachScript {
                element: element("element", e, r)?,
            },
            Action::SpawnBody {
                name,
                pos,
                shape,
                kind,
                vel,
                density,
                friction,
                restitution,
                parent,
            } => {
                let text = BodyText {
                    shape,
                    kind: kind.as_deref(),
                    density: density.as_deref(),
                    friction: friction.as_deref(),
                    restitution: restitution.as_deref(),
                };
                InputKind::SpawnBody {
                    parent: parent
                        .as_deref()
                        .map(|p| element("parent", p, r))
                        .transpose()?,
                    name: name.clone(),
                    pos: vec3("pos", pos)?,
                    body: body_spec(&text, str::to_string)?,
                    vel: vel.as_deref().map_or(Ok(Vec3::ZERO), |v| vec3("vel", v))?,
                }
            }
            Action::Push {
                element: e,
                impulse,
            } => InputKind::Push {
                element: element("element", e, r)?,
                impulse: vec3("impulse", impulse)?,
            },
            Action::SetVelocity { element: e, vel } => InputKind::SetVelocity {
                element: element("element", e, r)?,
                vel: vec3("vel", vel)?,
            },
            Action::SetAssets {
                element: e,
                mesh,
                texture,
            } => InputKind::SetAssets {
                element: element("element", e, r)?,
                mesh: mesh.as_deref().map(|h| asset("mesh", h)).transpose()?,
                texture: texture
                    .as_deref()
                    .map(|h| asset("texture", h))
                    .transpose()?,
            },
            Action::Walk { vel } => InputKind::Walk {
                vel: vec3("vel", vel)?,
            },
            Action::Grant { player: p } => InputKind::Admin(AdminAction::Grant {
                player: player("player", p, r)?,
            }),
            Action::Revoke { player: p } => InputKind::Admin(AdminAction::Revoke {
                player: player("player", p, r)?,
            }),
            Action::Kick { player: p } => InputKind::Admin(AdminAction::Kick {
                player: player("player", p, r)?,
            }),
            Action::Ban { player: p } => InputKind::Admin(AdminAction::Ban {
                player: player("player", p, r)?,
            }),
            Action::Unban { player: p } => InputKind::Admin(AdminAction::Unban {
                player: player("player", p, r)?,
            }),
            Action::Settings {
                name,
                temp_admin_absence_days,
                temp_admin_recent_days,
                spawn,
                elements_max,
                players_online_max,
                chat_history_max,
                text_bytes_max,
                script_instructions_max,
                script_memory_bytes_max,
                script_licences,
                walk_speed_max,
            } => InputKind::Admin(AdminAction::Settings(SettingsPatch {
                name: name.clone(),
                temp_admin_absence_days: *temp_admin_absence_days,
                temp_admin_recent_days: *temp_admin_recent_days,
                spawn: spawn.as_deref().map(|s| vec3("spawn", s)).transpose()?,
                elements_max: *elements_max,
                players_online_max: *players_online_max,
                chat_history_max: *chat_history_max,
                text_bytes_max: *text_bytes_max,
                script_instructions_max: *script_instructions_max,
                script_memory_bytes_max: *script_memory_bytes_max,
                script_licences: script_licences.clone(),
                walk_speed_max: walk_speed_max
                    .as_deref()
                    .map(|t| fx("walk_speed_max", t))
                    .transpose()?,
            })),
        })
    }
}
