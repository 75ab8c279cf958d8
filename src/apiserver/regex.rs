//! A small backtracking matcher for the `pattern` keyword of CRD schemas.
//!
//! NB: the real API server uses Go's RE2 syntax. The crate cannot name a regex
//! crate, so this covers what CRD patterns use in practice: anchors, `.`,
//! classes with ranges and `\d \w \s` (and their negations), groups
//! (capturing or `(?:...)`, both only group), alternation, and the greedy
//! quantifiers `* + ? {n} {n,} {n,m}` (a trailing `?` for lazy is accepted and
//! matched greedily, which gives the same yes/no answer). Anything else, such
//! as `\p{..}`, flags or `\b`, fails to compile, and the caller then skips the
//! check rather than reject valid input.

use std::fmt;

/// A compiled pattern.
#[derive(Clone, Debug)]
pub struct Regex {
    alternatives: Vec<Vec<Node>>,
}

/// Why a pattern was not compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub pattern: String,
    pub problem: &'static str,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pattern {:?}: {}", self.pattern, self.problem)
    }
}

#[derive(Clone, Debug)]
enum Node {
    Char(char),
    Any,
    Class(Class),
    Start,
    End,
    Group(Vec<Vec<Node>>),
    Repeat { node: Box<Node>, min: u32, max: Option<u32> },
}

#[derive(Clone, Debug)]
struct Class {
    negated: bool,
    items: Vec<ClassItem>,
}

#[derive(Clone, Copy, Debug)]
enum ClassItem {
    Range(char, char),
    Perl(Perl, bool),
}

#[derive(Clone, Copy, Debug)]
enum Perl {
    Digit,
    Space,
    Word,
}

impl Perl {
    fn matches(self, c: char) -> bool {
        match self {
            Perl::Digit => c.is_ascii_digit(),
            // RE2's \s is [\t\n\f\r ].
            Perl::Space => matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' '),
            Perl::Word => c.is_ascii_alphanumeric() || c == '_',
        }
    }
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let hit = self.items.iter().any(|item| match *item {
            ClassItem::Range(lo, hi) => lo <= c && c <= hi,
            ClassItem::Perl(perl, negated) => perl.matches(c) != negated,
        });
        hit != self.negated
    }
}

impl Regex {
    /// Compiles `pattern`, or says which part is not supported.
    pub fn new(pattern: &str) -> Result<Regex, Unsupported> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut parser = Parser { chars: &chars, pos: 0 };
        let fail = |problem| Unsupported { pattern: pattern.to_owned(), problem };
        let alternatives = parser.alternation().map_err(fail)?;
        if parser.pos != chars.len() {
            return Err(fail("unbalanced ')'"));
        }
        Ok(Regex { alternatives })
    }

    /// True when the pattern matches anywhere in `text` (RE2 `MatchString`).
    pub fn is_match(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let matcher = Matcher { text: &chars, steps: std::cell::Cell::new(0) };
        (0..=chars.len()).any(|start| matcher.alternatives(&self.alternatives, start, &mut |_| true))
    }
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

type ParseResult<T> = Result<T, &'static str>;

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn alternation(&mut self) -> ParseResult<Vec<Vec<Node>>> {
        let mut alternatives = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alternatives.push(self.sequence()?);
        }
        Ok(alternatives)
    }

    fn sequence(&mut self) -> ParseResult<Vec<Node>> {
        let mut nodes = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            let node = self.quantified(atom)?;
            nodes.push(node);
        }
        Ok(nodes)
    }

    fn atom(&mut self) -> ParseResult<Node> {
        let Some(c) = self.peek() else { return Err("unexpected end") };
        self.pos += 1;
        Ok(match c {
            '^' => Node::Start,
            '$' => Node::End,
            '.' => Node::Any,
            '(' => {
                if self.peek() == Some('?') {
                    self.pos += 1;
                    match self.peek() {
                        Some(':') => self.pos += 1,
                        Some('P') | Some('<') => {
                            while let Some(c) = self.peek() {
                                self.pos += 1;
                                if c == '>' {
                                    break;
                                }
                            }
                        }
                        _ => return Err("flags are not supported"),
                    }
                }
                let inner = self.alternation()?;
                if self.peek() != Some(')') {
                    return Err("missing ')'");
                }
                self.pos += 1;
                Node::Group(inner)
            }
            '[' => Node::Class(self.class()?),
            '\\' => self
                .escape(false)?
                .map_or_else(|item| Node::Class(Class { negated: false, items: vec![item] }), Node::Char),
            '*' | '+' | '?' => return Err("quantifier without an operand"),
            c => Node::Char(c),
        })
    }

    /// After a backslash: a literal character (Ok(Right)) or a class item (Ok(Left)).
    fn escape(&mut self, in_class: bool) -> ParseResult<Either> {
        let Some(c) = self.peek() else { return Err("trailing backslash") };
        self.pos += 1;
        Ok(match c {
            'd' => Either::Left(ClassItem::Perl(Perl::Digit, false)),
            'D' => Either::Left(ClassItem::Perl(Perl::Digit, true)),
            's' => Either::Left(ClassItem::Perl(Perl::Space, false)),
            'S' => Either::Left(ClassItem::Perl(Perl::Space, true)),
            'w' => Either::Left(ClassItem::Perl(Perl::Word, false)),
            'W' => Either::Left(ClassItem::Perl(Perl::Word, true)),
            'n' => Either::Right('\n'),
            't' => Either::Right('\t'),
            'r' => Either::Right('\r'),
            'f' => Either::Right('\x0c'),
            'v' => Either::Right('\x0b'),
            'b' | 'B' | 'A' | 'z' if !in_class => return Err("assertions other than ^ and $ are not supported"),
            c if c.is_ascii_punctuation() => Either::Right(c),
            _ => return Err("unsupported escape"),
        })
    }

    fn class(&mut self) -> ParseResult<Class> {
        let mut class = Class { negated: false, items: Vec::new() };
        if self.peek() == Some('^') {
            class.negated = true;
            self.pos += 1;
        }
        let mut first = true;
        loop {
            let Some(c) = self.peek() else { return Err("missing ']'") };
            self.pos += 1;
            let low = match c {
                ']' if !first => return Ok(class),
                '[' if self.peek() == Some(':') => return Err("POSIX classes are not supported"),
                '\\' => match self.escape(true)? {
                    Either::Left(item) => {
                        class.items.push(item);
                        first = false;
                        continue;
                    }
                    Either::Right(c) => c,
                },
                c => c,
            };
            first = false;
            // A range `a-z`, unless the `-` is the last character of the class.
            if self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']') {
                self.pos += 1;
                let Some(high) = self.peek() else { return Err("missing ']'") };
                self.pos += 1;
                let high = if high == '\\' {
                    match self.escape(true)? {
                        Either::Right(c) => c,
                        Either::Left(_) => return Err("a class cannot end a range"),
                    }
                } else {
                    high
                };
                if high < low {
                    return Err("inverted range in a class");
                }
                class.items.push(ClassItem::Range(low, high));
            } else {
                class.items.push(ClassItem::Range(low, low));
            }
        }
    }

    fn quantified(&mut self, atom: Node) -> ParseResult<Node> {
        let (min, max, width) = match self.peek() {
            Some('*') => (0, None, 1),
            Some('+') => (1, None, 1),
            Some('?') => (0, Some(1), 1),
            Some('{') => match self.counts() {
                Some(counts) => counts,
                // NB: like RE2, a `{` that does not start a count is a literal.
                None => return Ok(atom),
            },
            _ => return Ok(atom),
        };
        self.pos += width;
        if matches!(atom, Node::Start | Node::End) {
            return Err("quantified anchor");
        }
        if self.peek() == Some('?') {
            self.pos += 1;
        }
        if matches!(self.peek(), Some('*' | '+')) {
            return Err("nested quantifier");
        }
        Ok(Node::Repeat { node: Box::new(atom), min, max })
    }

    /// Reads `{n}`, `{n,}` or `{n,m}` at the cursor: the counts and how many
    /// characters they take.
    fn counts(&self) -> Option<(u32, Option<u32>, usize)> {
        let rest = &self.chars[self.pos..];
        let end = rest.iter().position(|&c| c == '}')?;
        let inside: String = rest[1..end].iter().collect();
        let (min, max) = match inside.split_once(',') {
            None => {
                let n = inside.parse().ok()?;
                (n, Some(n))
            }
            Some((lo, "")) => (lo.parse().ok()?, None),
            Some((lo, hi)) => (lo.parse().ok()?, Some(hi.parse().ok()?)),
        };
        if max.is_some_and(|max| max < min) || min > 1000 {
            return None;
        }
        Some((min, max, end + 1))
    }
}

enum Either {
    Left(ClassItem),
    Right(char),
}

impl Either {
    fn map_or_else<T>(self, left: impl FnOnce(ClassItem) -> T, right: impl FnOnce(char) -> T) -> T {
        match self {
            Either::Left(item) => left(item),
            Either::Right(c) => right(c),
        }
    }
}

/// Backtracking in continuation-passing style: each step calls `next` with
/// the position after it, and gives up after a budget of steps so that a
/// pathological pattern cannot hang a request.
struct Matcher<'a> {
    text: &'a [char],
    steps: std::cell::Cell<u32>,
}

const STEP_BUDGET: u32 = 1_000_000;

impl Matcher<'_> {
    fn alternatives(&self, alternatives: &[Vec<Node>], pos: usize, next: &mut dyn FnMut(usize) -> bool) -> bool {
        alternatives.iter().any(|seq| self.sequence(seq, pos, next))
    }

    fn sequence(&self, seq: &[Node], pos: usize, next: &mut dyn FnMut(usize) -> bool) -> bool {
        let Some((first, rest)) = seq.split_first() else { return next(pos) };
        self.node(first, pos, &mut |after| self.sequence(rest, after, next))
    }

    fn node(&self, node: &Node, pos: usize, next: &mut dyn FnMut(usize) -> bool) -> bool {
        let steps = self.steps.get() + 1;
        self.steps.set(steps);
        if steps > STEP_BUDGET {
            return false;
        }
        let here = self.text.get(pos).copied();
        match node {
            Node::Char(c) => here == Some(*c) && next(pos + 1),
            Node::Any => here.is_some_and(|c| c != '\n') && next(pos + 1),
            Node::Class(class) => here.is_some_and(|c| class.matches(c)) && next(pos + 1),
            Node::Start => pos == 0 && next(pos),
            Node::End => pos == self.text.len() && next(pos),
            Node::Group(alternatives) => self.alternatives(alternatives, pos, next),
            Node::Repeat { node, min, max } => self.repeat(node, *min, *max, 0, pos, next),
        }
    }

    fn repeat(
        &self,
        node: &Node,
        min: u32,
        max: Option<u32>,
        count: u32,
        pos: usize,
        next: &mut dyn FnMut(usize) -> bool,
    ) -> bool {
        if max.is_none_or(|max| count < max)
            && self.node(node, pos, &mut |after| {
                // An empty iteration past the minimum would loop for ever.
                (after != pos || count < min) && self.repeat(node, min, max, count + 1, after, next)
            })
        {
            return true;
        }
        count >= min && next(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::Regex;

    #[test]
    fn patterns_of_the_fenice_crds_match_like_re2() {
        let cases: &[(&str, &str, bool)] = &[
            (r"^[0-9]{11}$", "01234567897", true),
            (r"^[0-9]{11}$", "0123456789", false),
            (r"^[0-9]{11}$", "012345678977", false),
            (r"^https?://[^\s/$.?#][^\s]*$", "https://sdi.example.it/ws", true),
            (r"^https?://[^\s/$.?#][^\s]*$", "ftp://x", false),
            (r"^https?://[^\s/$.?#][^\s]*$", "https:// x", false),
            (r"^([0-9]+(ms|s|m|h|d))+$", "1h30m", true),
            (r"^([0-9]+(ms|s|m|h|d))+$", "500ms", true),
            (r"^([0-9]+(ms|s|m|h|d))+$", "1y", false),
            (r"^([0-9]+(ms|s|m|h|d))+$", "", false),
            (r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$", "0 */6 * * *", true),
            (r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$", "@daily", true),
            (r"^(@(hourly|daily|weekly|monthly)|(\S+\s+){4}\S+)$", "0 3 * *", false),
            (r"^(UTC|[A-Za-z_]+(/[A-Za-z0-9_+-]+)+)$", "Europe/Rome", true),
            (r"^(UTC|[A-Za-z_]+(/[A-Za-z0-9_+-]+)+)$", "Rome", false),
            (r"^(latest|[0-9a-f]{8,64})$", "deadbeef", true),
            (r"^(latest|[0-9a-f]{8,64})$", "dead", false),
            (r"^[a-z0-9](-?[a-z0-9])+$", "eu-south-1", true),
            (r"^[a-z0-9](-?[a-z0-9])+$", "eu--south", false),
            (r"^/", "/data", true),
            (r"^/", "data", false),
            (r"b+", "aabbb", true),
            (r"x{2,}", "axxb", true),
            (r"a{", "a{", true),
            (r"^[a-]+$", "a-a", true),
            (r"^(a*)*$", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", false),
        ];
        for (pattern, text, want) in cases {
            let regex = Regex::new(pattern).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(regex.is_match(text), *want, "{pattern} on {text:?}");
        }
    }

    #[test]
    fn unsupported_syntax_is_reported_not_misread() {
        for pattern in [r"\p{L}", r"(?i)abc", r"\bword", "(a", "a)", "[a-"] {
            assert!(Regex::new(pattern).is_err(), "{pattern} should not compile");
        }
    }
}
