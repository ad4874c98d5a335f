//! A reader for Lua 5.4's precompiled-chunk format, just deep enough to
//! find every `SETUPVAL` instruction: a function assigning a variable of an
//! enclosing function. Scripts may not do that (docs/adr/0004): such a
//! variable would carry data from one call to the next outside `state`.
//!
//! The dump comes from the host (`Function::dump` of the compiled source);
//! scripts can never load bytecode.

/// `OP_SETUPVAL` in Lua 5.4's `lopcodes.h` (`OP_MOVE` is 0).
const OP_SETUPVAL: u32 = 10;
/// Bytes of the header after the signature: version, format, LUAC_DATA (6),
/// three type sizes, LUAC_INT (8), LUAC_NUM (8).
const HEADER_BYTES: usize = 4 + 1 + 1 + 6 + 3 + 8 + 8;

/// A function that assigns a variable of an enclosing function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpvalueWrite {
    /// The line where the function is defined.
    pub line: u32,
    /// The variable's name (empty if unknown).
    pub name: String,
}

/// Why a dump could not be read (a bug: the dump is our own).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable bytecode at byte {0}")]
pub struct DumpError(usize);

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], DumpError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or(DumpError(self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DumpError> {
        Ok(self.bytes(1)?[0])
    }

    /// `dumpSize`: 7-bit groups, most significant first, the last byte
    /// marked with 0x80.
    fn size(&mut self) -> Result<usize, DumpError> {
        let mut x: usize = 0;
        loop {
            let b = self.byte()?;
            x = x
                .checked_mul(128)
                .and_then(|x| x.checked_add(usize::from(b & 0x7f)))
                .ok_or(DumpError(self.at))?;
            if b & 0x80 != 0 {
                return Ok(x);
            }
        }
    }

    fn string(&mut self) -> Result<Vec<u8>, DumpError> {
        match self.size()? {
            0 => Ok(Vec::new()),
            n => Ok(self.bytes(n - 1)?.to_vec()),
        }
    }

    fn function(&mut self, nested: bool, out: &mut Vec<UpvalueWrite>) -> Result<(), DumpError> {
        self.string()?; // source
        let line = self.size()?;
        self.size()?; // last line
        self.bytes(3)?; // params, vararg, stack size
        let ncode = self.size()?;
        let code = self.bytes(ncode.checked_mul(4).ok_or(DumpError(self.at))?)?;
        let mut writes: Vec<usize> = Vec::new();
        for w in code.chunks_exact(4) {
            let i = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            if i & 0x7f == OP_SETUPVAL {
                // iABC: op bits 0..7, A 7..15, k 15, B 16..24, C 24..32;
                // B is the upvalue.
                writes.push(((i >> 16) & 0xff) as usize);
            }
        }
        let nk = self.size()?;
        for _ in 0..nk {
            match self.byte()? {
                0x13 | 0x03 => {
                    self.bytes(8)?; // float, integer
                }
                0x04 | 0x14 => {
                    self.string()?; // short, long string
                }
                _ => {} // nil, false, true
            }
        }
        let nup = self.size()?;
        self.bytes(nup.checked_mul(3).ok_or(DumpError(self.at))?)?;
        let nprotos = self.size()?;
        for _ in 0..nprotos {
            self.function(true, out)?;
        }
        let nline = self.size()?;
        self.bytes(nline)?;
        let nabs = self.size()?;
        for _ in 0..nabs {
            self.size()?;
            self.size()?;
        }
        let nloc = self.size()?;
        for _ in 0..nloc {
            self.string()?;
            self.size()?;
            self.size()?;
        }
        let nnames = self.size()?;
        let mut names = Vec::with_capacity(nnames.min(256));
        for _ in 0..nnames {
            names.push(self.string()?);
        }
        if nested {
            for up in writes {
                out.push(UpvalueWrite {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    name: names
                        .get(up)
                        .map(|n| String::from_utf8_lossy(n).into_owned())
                        .unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

/// Every assignment to an upvalue in a function nested in the chunk, in the
/// order of the dump.
pub fn upvalue_writes(dump: &[u8]) -> Result<Vec<UpvalueWrite>, DumpError> {
    let mut r = Reader { b: dump, at: 0 };
    if r.bytes(HEADER_BYTES)?.get(..4) != Some(b"\x1bLua") {
        return Err(DumpError(0));
    }
    r.byte()?; // main function's upvalue count
    let mut out = Vec::new();
    r.function(false, &mut out)?;
    if r.at != dump.len() {
        return Err(DumpError(r.at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    fn writes(src: &str) -> Vec<UpvalueWrite> {
        let lua = Lua::new();
        let f = lua
            .load(src)
            .into_function()
            .unwrap_or_else(|e| panic!("{e}"));
        upvalue_writes(&f.dump(false)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn finds_assignments_to_enclosing_variables() {
        assert!(writes("local n = 0\nfunction f() return n + 1 end\nn = 3").is_empty());
        assert!(writes("function f() local n = 0; n = n + 1; return n end").is_empty());
        let w = writes("local a, b = 1, 'x'\n\nfunction f()\n  b = b .. 'y'\nend");
        assert_eq!(
            w,
            vec![UpvalueWrite {
                line: 3,
                name: "b".into()
            }]
        );
        // Deeply nested, and through a constant-heavy function.
        let w = writes(
            "local t = {1.5, 'long string constant', 3, true}\nfunction g()\n  local function h() t = nil end\n  return h\nend",
        );
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].name, "t");
        assert_eq!(w[0].line, 3);
        // Assigning _ENV from a function is assigning an upvalue too.
        assert_eq!(writes("function f() _ENV = {} end")[0].name, "_ENV");
    }

    #[test]
    fn refuses_garbage() {
        assert!(upvalue_writes(b"").is_err());
        assert!(upvalue_writes(&[0x1b, b'L', b'u', b'a', 0x54]).is_err());
    }
}
