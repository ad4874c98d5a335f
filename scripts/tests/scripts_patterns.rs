//! Pattern functions: the counted Rust port gives Lua 5.4's results, and
//! a pathological pattern ends with "instruction budget exhausted" instead
//! of running for hours inside one C call.

#![allow(clippy::unwrap_used)]

mod common;

use common::{COUNTER, World, faults};

/// Runs every case and returns one line per case: the results, or "error".
const CASES: &str = r#"
local cases = {
  { "hello world", "o" }, { "hello world", "o", 6 }, { "hello world", "l+" },
  { "hello world", "(h)(e)" }, { "hello world", "()ll()" }, { "hello", "^h" },
  { "hello", "^e" }, { "hello", "o$" }, { "hello", "x*" }, { "", "x*" },
  { "key = value", "^(%w+)%s*=%s*(.-)%s*$" }, { "  trim me  ", "^%s*(.-)%s*$" },
  { "a,b,,c", "([^,]*)" }, { "THE (quick) fox", "%((%a+)%)" },
  { "f(a(b)c)d", "%b()" }, { "THE (quick) fox", "%f[%a]%a+" },
  { "hello hello", "(h%a+) %1" }, { "x = 1.5e3", "%d+%.?%d*" },
  { "[a]", "[]]" }, { "a-b", "[a-]" }, { "a.b", "%." }, { "abc", "[^%a]" },
  { "abc", "b", -1 }, { "abc", "b", -2 }, { "abc", "", 10 }, { "abc", "", 4 },
  { "aaa", "a-" }, { "aaa", "a-$" }, { "aaab", "a-b" }, { "tab\there", "%s" },
  { "\0\1x", "%c+" }, { "üñí", "[\128-\255]+" }, { "a1B2", "%u%d" },
  { "hello", "(" }, { "hello", "%" }, { "hello", "[a" }, { "hello", "%1" },
  { "hello", "(()" }, { "hello", "%f" }, { "hello", "%b" }, { 12345, 3 },
}
local out = {}
local function show(...)
  local t = table.pack(...)
  for i = 1, t.n do t[i] = tostring(t[i]) end
  return table.concat(t, "|", 1, t.n)
end
for i, c in ipairs(cases) do
  local s, p, init = c[1], c[2], c[3]
  local line = {}
  for _, f in ipairs({ "find", "match" }) do
    local ok, r = pcall(function() return show(string[f](s, p, init)) end)
    line[#line + 1] = ok and r or "error"
  end
  local ok, r = pcall(function()
    local seen = {}
    for a, b in string.gmatch(s, p, init) do
      seen[#seen + 1] = tostring(a) .. "/" .. tostring(b)
      if #seen > 50 then break end
    end
    return table.concat(seen, " ")
  end)
  line[#line + 1] = ok and r or "error"
  for _, repl in ipairs({ "<%0>", "%1!", "%%", "%x", "", 7 }) do
    local ok2, r2 = pcall(function() return show(string.gsub(s, p, repl)) end)
    line[#line + 1] = ok2 and r2 or "error"
  end
  local ok3, r3 = pcall(function()
    return show(string.gsub(s, p, function(a) if a == "l" then return false end return "[" .. tostring(a) .. "]" end, 3))
  end)
  line[#line + 1] = ok3 and r3 or "error"
  local ok4, r4 = pcall(function() return show(string.gsub(s, p, { h = "H", o = 0 })) end)
  line[#line + 1] = ok4 and r4 or "error"
  out[i] = table.concat(line, " ; ")
end
return table.concat(out, "\n")
"#;

#[test]
fn the_counted_port_matches_lua() {
    // The reference: Lua 5.4's own string library.
    let lua = mlua::Lua::new();
    let want: String = lua.load(CASES).eval().unwrap();
    let mut w = World::with_settings(metatopia_sim::Settings {
        script_instructions_max: 5_000_000,
        script_state_bytes_max: 1 << 20,
        ..common::settings()
    });
    let body =
        format!("local function run()\n{CASES}\nend\nfunction on_touch() state.out = run() end");
    let e = w.scripted("p", &body);
    let r = w.touch(&[e]);
    assert!(faults(&r).is_empty(), "{:?}", faults(&r));
    let got = w.text(e, "out").unwrap();
    for (g, l) in got.lines().zip(want.lines()) {
        assert_eq!(g, l);
    }
    assert_eq!(got, want);
    assert!(want.contains("error"), "the cases include errors");
}

#[test]
fn pathological_patterns_run_out_of_budget() {
    let mut w = World::new();
    let good = w.scripted("good", COUNTER);
    for (name, body) in [
        (
            "nested lazy quantifiers",
            "function on_touch() state.x = 1; string.find(string.rep('a', 1e5), '.-.-.-.-b') end",
        ),
        (
            "in pcall",
            "function on_touch() state.x = 1; pcall(string.find, string.rep('a', 1e5), '.-.-.-.-b') end",
        ),
        (
            "as a method, greedy",
            "function on_touch() state.x = 1; local s = ('a'):rep(5e4); s:match('(.*)(.*)(.*)b') end",
        ),
        (
            "gsub with a backtracking pattern",
            "function on_touch() state.x = 1; string.gsub(string.rep('a', 3e4), 'a-a-a-b', 'x') end",
        ),
        (
            "gmatch",
            "function on_touch() for w in string.rep('a', 3e4):gmatch('a*a*a*b') do end end",
        ),
    ] {
        let bad = w.scripted(name, body);
        let r = w.touch(&[bad, good]);
        let f = faults(&r);
        assert_eq!(f.len(), 1, "{name}: {f:?}");
        assert!(
            f[0].1.contains("instruction budget exhausted"),
            "{name}: {f:?}"
        );
        w.tick(vec![metatopia_sim::input::InputKind::DetachScript {
            element: bad,
        }]);
    }
    assert!(w.int(good, "n").unwrap() >= 5);
}

#[test]
fn a_gmatch_iterator_made_at_load_works_only_at_load() {
    let mut w = World::new();
    let e = w.scripted(
        "g",
        "local words = {}\nfor x in ('a b c'):gmatch('%a') do words[#words + 1] = x end\nlocal it = ('x y'):gmatch('%a')\nfunction on_touch() state.n = #words; state.w = it() end",
    );
    let r = w.touch(&[e]);
    let f = faults(&r);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].1.contains("made while the script loaded"), "{f:?}");
}
