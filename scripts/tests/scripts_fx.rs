//! The `fx` library through the sandbox: results equal the sim's `Fx`
//! arithmetic, and bad arguments fail with the documented messages.

#![allow(clippy::unwrap_used)]

mod common;

use metatopia_scripts::codec::{self, Data};
use metatopia_scripts::{Limits, Sandbox};
use metatopia_sim::Fx;
use metatopia_sim::script::{ScriptFault, ScriptOutput};

fn run(body: &str) -> Result<ScriptOutput, ScriptFault> {
    let (world, me) = common::one_object();
    let limits = Limits::default();
    let sandbox = Sandbox::new(&format!("{}{body}", common::LICENCE), me, &limits).unwrap();
    common::timer_call(&sandbox, &world, me, Vec::new(), &limits)
}

fn state(out: ScriptOutput) -> Vec<(Data, Data)> {
    match codec::decode(&out.state.unwrap()).unwrap() {
        Data::Table(entries) => entries,
        other => panic!("{other:?}"),
    }
}

#[test]
fn fx_functions_compute_what_the_sim_computes() {
    let out = run(r#"function on_timer()
        local a, b = fx("2.5"), fx(-3)
        state.mul = fx.mul(a, b)
        state.div = fx.div(a, b)
        state.add = fx.add(fx.MAX, fx.ONE)
        state.sub = fx.sub(a, b)
        state.sqrt = fx.sqrt(a)
        state.sin = fx.sin(a)
        state.cos = fx.cos(a)
        state.atan2 = fx.atan2(a, b)
        state.abs = fx.abs(b)
        state.floor = fx.floor(fx("-2.5"))
        state.text = fx.tostring(a)
        state.new = fx.new(7)
    end"#)
    .unwrap();
    let a: Fx = "2.5".parse().unwrap();
    let b = Fx::from_int(-3);
    let int = |f: Fx| Data::Int(f.to_bits());
    let want = [
        ("abs", int(b.saturating_abs())),
        ("add", int(Fx::MAX.saturating_add(Fx::ONE))),
        ("atan2", int(Fx::atan2(a, b))),
        ("cos", int(a.cos())),
        ("div", int(a.checked_div(b).unwrap())),
        (
            "floor",
            Data::Int(i64::from("-2.5".parse::<Fx>().unwrap().floor_int())),
        ),
        ("mul", int(a.checked_mul(b).unwrap())),
        ("new", int(Fx::from_int(7))),
        ("sin", int(a.sin())),
        ("sqrt", int(a.sqrt().unwrap())),
        ("sub", int(a.saturating_sub(b))),
        ("text", Data::Str(a.to_string().into_bytes())),
    ];
    let got = state(out);
    assert_eq!(got.len(), want.len());
    for ((k, v), (name, w)) in got.iter().zip(want) {
        assert_eq!(k, &Data::Str(name.as_bytes().to_vec()));
        assert_eq!(v, &w, "{name}");
    }
}

#[test]
fn fx_errors_name_the_function_and_pcall_gets_the_text() {
    for (body, want) in [
        ("fx.div(fx(1), 0)", "fx.div(1, 0): division by zero"),
        ("fx.mul(1.5, fx(2))", "fx.mul: got the float 1.5"),
        ("fx.mul(fx.MAX, fx(2))", "overflow"),
        ("fx.sqrt(fx(-1))", "fx.sqrt(-1): negative"),
        (
            "fx.sin('x')",
            "fx.sin: expected an fx value (an integer), got string",
        ),
        ("fx('nope')", "fx(\"nope\")"),
        ("fx(1.5)", "fx(1.5): floats differ between machines"),
        ("fx(1 << 40)", "out of range"),
    ] {
        let src = format!("function on_timer() local x = {body} end");
        match run(&src) {
            Err(ScriptFault::Error(e)) => assert!(e.contains(want), "{body}: {e}"),
            other => panic!("{body}: {other:?}"),
        }
        let caught = format!(
            "function on_timer() local ok, e = pcall(function() return {body} end); state.ok = ok; state.e = e end"
        );
        let got = state(run(&caught).unwrap());
        assert_eq!(
            got[1],
            (Data::Str(b"ok".to_vec()), Data::Bool(false)),
            "{body}"
        );
        match &got[0].1 {
            Data::Str(e) => assert!(String::from_utf8_lossy(e).contains(want), "{body}: {got:?}"),
            other => panic!("{body}: error is {other:?}"),
        }
    }
}
