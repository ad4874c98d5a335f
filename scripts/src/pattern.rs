//! Lua 5.4's pattern matching (`lstrlib.c`), ported so that its work is
//! counted: a pathological pattern (`string.find(("a"):rep(1e5),
//! ".-.-.-.-b")`) backtracks inside one C call, which the instruction hook
//! never sees. Here every step of the matcher is charged to the handler's
//! instruction budget, so such a call ends with "instruction budget
//! exhausted" like any other loop. The results are those of Lua 5.4.9's
//! `string.find`, `match`, `gmatch` and `gsub` (the tests compare them with
//! the C originals).

/// Most captures in one pattern (`LUA_MAXCAPTURES`).
const MAX_CAPTURES: usize = 32;
/// Deepest recursion of the matcher (`MAXCCALLS`).
const MAX_DEPTH: u32 = 200;
/// Steps between budget checks.
const CHECK_EVERY: u64 = 1024;

/// Why a match stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// A malformed pattern or bad capture use, with Lua's message.
    Lua(String),
    /// The step budget ran out.
    Budget,
}

/// A capture: a position or a substring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// `()`: the 1-based position.
    Position(usize),
    /// A substring `[start, end)` of the subject.
    Text(usize, usize),
}

#[derive(Clone, Copy)]
enum Len {
    Unfinished,
    Position,
    Text(usize),
}

/// The matcher's state; `charge` is called with the steps done so far and
/// fails when the budget is gone.
pub struct Matcher<'a, F: FnMut(u64) -> bool> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: u32,
    level: usize,
    capture: [(usize, Len); MAX_CAPTURES],
    steps: u64,
    charge: F,
}

fn lua(msg: impl Into<String>) -> PatternError {
    PatternError::Lua(msg.into())
}

fn class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c == b' ' || (9..=13).contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        _ => return cl == c,
    };
    if cl.is_ascii_uppercase() { !res } else { res }
}

impl<F: FnMut(u64) -> bool> std::fmt::Debug for Matcher<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("level", &self.level)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl<'a, F: FnMut(u64) -> bool> Matcher<'a, F> {
    /// A matcher of `pat` against `src`.
    pub fn new(src: &'a [u8], pat: &'a [u8], charge: F) -> Self {
        Matcher {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            capture: [(0, Len::Unfinished); MAX_CAPTURES],
            steps: 0,
            charge,
        }
    }

    /// The pattern byte at `i`, or 0 past the end (C strings end in NUL).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn s(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn step(&mut self, n: u64) -> Result<(), PatternError> {
        let before = self.steps / CHECK_EVERY;
        self.steps += n;
        if self.steps / CHECK_EVERY != before && !(self.charge)(self.steps) {
            return Err(PatternError::Budget);
        }
        Ok(())
    }

    /// Charges what is left; call once at the end.
    pub fn finish(&mut self) -> Result<(), PatternError> {
        if (self.charge)(self.steps) {
            Ok(())
        } else {
            Err(PatternError::Budget)
        }
    }

    fn class_end(&self, mut p: usize) -> Result<usize, PatternError> {
        let c = self.p(p);
        p += 1;
        match c {
            b'%' => {
                if p >= self.pat.len() {
                    return Err(lua("malformed pattern (ends with '%')"));
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return Err(lua("malformed pattern (missing ']')"));
                    }
                    let c = self.p(p);
                    p += 1;
                    if c == b'%' && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    /// `[...]` at `p`, ending at `ec` (its `]`).
    fn bracket(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.p(p) == b'%' {
                p += 1;
                if class(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
        !sig
    }

    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        if s >= self.src.len() {
            return false;
        }
        let c = self.src[s];
        match self.p(p) {
            b'.' => true,
            b'%' => class(c, self.p(p + 1)),
            b'[' => self.bracket(c, p, ep - 1),
            pc => pc == c,
        }
    }

    fn balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if p + 1 >= self.pat.len() {
            return Err(lua("malformed pattern (missing arguments to '%b')"));
        }
        if s >= self.src.len() || self.src[s] != self.p(p) {
            return Ok(None);
        }
        let (b, e) = (self.p(p), self.p(p + 1));
        let mut cont = 1;
        let mut i = s + 1;
        while i < self.src.len() {
            self.step(1)?;
            let c = self.src[i];
            if c == e {
                cont -= 1;
                if cont == 0 {
                    return Ok(Some(i + 1));
                }
            } else if c == b {
                cont += 1;
            }
            i += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, PatternError> {
        let mut i = 0;
        while self.single(s + i, p, ep) {
            self.step(1)?;
            i += 1;
        }
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(
        &mut self,
        mut s: usize,
        p: usize,
        ep: usize,
    ) -> Result<Option<usize>, PatternError> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if self.single(s, p, ep) {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(
        &mut self,
        s: usize,
        p: usize,
        what: Len,
    ) -> Result<Option<usize>, PatternError> {
        if self.level >= MAX_CAPTURES {
            return Err(lua("too many captures"));
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        let l = (0..self.level)
            .rev()
            .find(|l| matches!(self.capture[*l].1, Len::Unfinished))
            .ok_or_else(|| lua("invalid pattern capture"))?;
        self.capture[l].1 = Len::Text(s - self.capture[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = Len::Unfinished;
        }
        Ok(r)
    }

    fn check_capture(&self, l: u8) -> Result<usize, PatternError> {
        let l = i32::from(l) - i32::from(b'1');
        if l < 0
            || l as usize >= self.level
            || matches!(self.capture[l as usize].1, Len::Unfinished)
        {
            return Err(lua(format!("invalid capture index %{}", l + 1)));
        }
        Ok(l as usize)
    }

    fn match_capture(&mut self, s: usize, l: u8) -> Result<Option<usize>, PatternError> {
        let l = self.check_capture(l)?;
        let (init, len) = self.capture[l];
        let len = match len {
            Len::Text(n) => n,
            _ => 0,
        };
        self.step(len as u64)?;
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    /// `match` of lstrlib.c: the end of a match of `pat[p..]` at `s`.
    fn do_match(&mut self, s: usize, p: usize) -> Result<Option<usize>, PatternError> {
        if self.depth == 0 {
            return Err(lua("pattern too complex"));
        }
        self.depth -= 1;
        let r = self.match_inner(s, p);
        self.depth += 1;
        r
    }

    /// Long on purpose: a port of lstrlib.c's `match`, one arm per pattern item, kept in Lua's shape so the two can be compared.
    fn match_inner(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, PatternError> {
        loop {
            self.step(1)?;
            if p >= self.pat.len() {
                return Ok(Some(s));
            }
            match self.p(p) {
                b'(' => {
                    return if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, Len::Position)
                    } else {
                        self.start_capture(s, p + 1, Len::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                b'%' if self.p(p + 1) == b'b' => match self.balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                b'%' if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return Err(lua("missing '[' after '%f' in pattern"));
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.s(s - 1) };
                    if !self.bracket(previous, p, ep - 1) && self.bracket(self.s(s), p, ep - 1) {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                b'%' if self.p(p + 1).is_ascii_digit() => {
                    match self.match_capture(s, self.p(p + 1))? {
                        Some(e) => {
                            s = e;
                            p += 2;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                _ => {
                    let ep = self.class_end(p)?;
                    let next = self.p(ep);
                    if !self.single(s, p, ep) {
                        if next == b'*' || next == b'?' || next == b'-' {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match next {
                        b'?' => match self.do_match(s + 1, ep + 1)? {
                            Some(r) => return Ok(Some(r)),
                            None => {
                                p = ep + 1;
                                continue;
                            }
                        },
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                            continue;
                        }
                    }
                }
            }
        }
    }

    /// The first match of the pattern (from `p0`, after any `^` the caller
    /// removed) at or after `init`, at `init` only if `anchor`, whose end is
    /// not `skip_end`: `(start, end)`, captures in [`Matcher::captures`].
    pub fn find(
        &mut self,
        init: usize,
        p0: usize,
        anchor: bool,
        skip_end: Option<usize>,
    ) -> Result<Option<(usize, usize)>, PatternError> {
        if init > self.src.len() {
            return Ok(None);
        }
        let mut s1 = init;
        loop {
            self.level = 0;
            self.depth = MAX_DEPTH;
            if let Some(e) = self.do_match(s1, p0)?
                && Some(e) != skip_end
            {
                return Ok(Some((s1, e)));
            }
            s1 += 1;
            if anchor || s1 > self.src.len() {
                return Ok(None);
            }
        }
    }

    /// The captures of the last match `[s, e)`: the whole match if the
    /// pattern has none and `whole` is set.
    pub fn captures(&self, s: usize, e: usize, whole: bool) -> Result<Vec<Capture>, PatternError> {
        if self.level == 0 {
            return Ok(if whole {
                vec![Capture::Text(s, e)]
            } else {
                Vec::new()
            });
        }
        self.capture[..self.level]
            .iter()
            .map(|(init, len)| match len {
                Len::Unfinished => Err(lua("unfinished capture")),
                Len::Position => Ok(Capture::Position(init + 1)),
                Len::Text(n) => Ok(Capture::Text(*init, init + n)),
            })
            .collect()
    }

    /// Capture `i` (0-based) for `%1`..`%9` in a replacement: the whole
    /// match for `i == 0` when there are no captures.
    pub fn one_capture(&self, i: usize, s: usize, e: usize) -> Result<Capture, PatternError> {
        if i >= self.level {
            if i != 0 {
                return Err(lua(format!("invalid capture index %{}", i + 1)));
            }
            return Ok(Capture::Text(s, e));
        }
        match self.capture[i].1 {
            Len::Unfinished => Err(lua("unfinished capture")),
            Len::Position => Ok(Capture::Position(self.capture[i].0 + 1)),
            Len::Text(n) => Ok(Capture::Text(self.capture[i].0, self.capture[i].0 + n)),
        }
    }
}

/// Whether `pat` has none of Lua's pattern specials (then `find` is a
/// plain substring search).
pub fn no_specials(pat: &[u8]) -> bool {
    !pat.iter().any(|c| b"^$*+?.([%-".contains(c))
}

/// Plain substring search from `init`, charging one step per byte compared
/// position: `(start, end)`.
pub fn plain_find(src: &[u8], pat: &[u8], init: usize, steps: &mut u64) -> Option<(usize, usize)> {
    if pat.is_empty() {
        return Some((init, init));
    }
    if pat.len() > src.len().saturating_sub(init) {
        return None;
    }
    let hay = &src[init..];
    *steps += (hay.len() as u64).saturating_mul(pat.len() as u64 / 16 + 1);
    hay.windows(pat.len())
        .position(|w| w == pat)
        .map(|i| (init + i, init + i + pat.len()))
}

/// 1-based `init` as Lua's `posrelatI`, made 0-based.
pub fn init_index(init: Option<i64>, len: usize) -> usize {
    let pos = init.unwrap_or(1);
    let p = if pos > 0 {
        pos as u64 as usize
    } else if pos == 0 || pos < -(len as i64) {
        1
    } else {
        (len as i64 + pos + 1) as usize
    };
    p - 1
}
