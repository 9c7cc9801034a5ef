//! The grammar of the compiled subset: a lexer for jq's tokens and a
//! precedence-climbing parser into [`Node`]s. It accepts only what the
//! evaluator runs; anything else is refused with a sentence saying what
//! (for `handoff test --explain`), and the program runs in jq. Only
//! programs jaq compiles reach it: it is a subset of jq's grammar, not a
//! judge of it.

use serde_json::Value;

use super::{check_output, jq, Builtin, Node, Op, Part, Step};

/// `code` as a [`Node`], or why it is not in the subset.
pub(super) fn parse(code: &str) -> Result<Node, String> {
    Parser::whole(lex(code)?)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Dot,
    /// `.name` (a field right after a dot, no space).
    Field(String),
    Ident(String),
    /// A string literal's source text, quotes included.
    Str(String),
    /// A string with interpolations: its literal pieces' source text
    /// (without quotes) and the tokens of each `\(...)`.
    Template(Vec<Piece>),
    /// A number literal's source text.
    Num(String),
    Punct(&'static str),
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(w) if is_keyword(w) => format!("`{w}`"),
            Token::Ident(w) => format!("`{w}` (a function or builtin)"),
            Token::Punct(p) => format!("`{p}`"),
            Token::Dot | Token::Field(_) => "a path here".to_string(),
            Token::Str(_) | Token::Num(_) => "a literal here".to_string(),
            Token::Template(_) => "an interpolated string here".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Code(Vec<Token>),
}

/// Where the string literal opening at `b[i]` (a `"`) ends: the index
/// after its closing quote, past any `\(...)` inside it.
fn string_end(b: &[u8], i: usize) -> Result<usize, String> {
    let mut j = i + 1;
    loop {
        match b.get(j) {
            None => return Err("an unterminated string".to_string()),
            Some(b'\\') if b.get(j + 1) == Some(&b'(') => j = group_end(b, j + 2)?,
            Some(b'\\') => j += 2,
            Some(b'"') => return Ok(j + 1),
            Some(_) => j += 1,
        }
    }
}

/// Where the group opened just before `b[i]` (by `(`) ends: the index
/// after its `)`, past nested groups and strings.
fn group_end(b: &[u8], i: usize) -> Result<usize, String> {
    let (mut j, mut depth) = (i, 1usize);
    while depth > 0 {
        match b.get(j) {
            None => return Err("an unterminated interpolation".to_string()),
            Some(b'"') => {
                j = string_end(b, j)?;
                continue;
            }
            Some(b'(') => depth += 1,
            Some(b')') => depth -= 1,
            _ => {}
        }
        j += 1;
    }
    Ok(j)
}

/// The string literal `code[i..end]` (quotes included) as a token: plain,
/// or a template of its pieces.
fn string_token(code: &str, i: usize, end: usize) -> Result<Token, String> {
    let b = code.as_bytes();
    let inner = (i + 1, end - 1);
    let mut pieces = Vec::new();
    let (mut j, mut text_from) = (inner.0, inner.0);
    while j < inner.1 {
        if b[j] == b'\\' && b.get(j + 1) == Some(&b'(') {
            if text_from < j {
                pieces.push(Piece::Text(code[text_from..j].to_string()));
            }
            let close = group_end(b, j + 2)?;
            pieces.push(Piece::Code(lex(&code[j + 2..close - 1])?));
            j = close;
            text_from = j;
        } else if b[j] == b'\\' {
            j += 2;
        } else {
            j += 1;
        }
    }
    if pieces.is_empty() {
        return Ok(Token::Str(code[i..end].to_string()));
    }
    if text_from < inner.1 {
        pieces.push(Piece::Text(code[text_from..inner.1].to_string()));
    }
    Ok(Token::Template(pieces))
}

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "if", "then", "elif", "else", "end", "as", "def", "reduce", "foreach", "try", "catch", "label",
    "import", "include", "__loc__", "null", "true", "false",
];

fn is_keyword(w: &str) -> bool {
    KEYWORDS.contains(&w)
}

fn lex(code: &str) -> Result<Vec<Token>, String> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_start = |c: u8| c.is_ascii_alphabetic() || c == b'_';
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'.' => {
                if b.get(i + 1) == Some(&b'.') {
                    return Err("`..` (recursion) is not compiled".to_string());
                }
                let start = i + 1;
                let mut j = start;
                if j < b.len() && ident_start(b[j]) {
                    while j < b.len() && ident_char(b[j]) {
                        j += 1;
                    }
                    out.push(Token::Field(code[start..j].to_string()));
                    i = j;
                } else if b.get(j).is_some_and(u8::is_ascii_digit) {
                    // `.5`: a number jq reads its own way.
                    return Err("a number written `.5` is not compiled".to_string());
                } else {
                    out.push(Token::Dot);
                    i += 1;
                }
            }
            b'"' => {
                let end = string_end(b, i)?;
                out.push(string_token(code, i, end)?);
                i = end;
            }
            b'0'..=b'9' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    // Exponents with a sign: `1e-3`.
                    if (b[j] == b'e' || b[j] == b'E') && matches!(b.get(j + 1), Some(b'+' | b'-')) {
                        j += 1;
                    }
                    j += 1;
                }
                out.push(Token::Num(code[i..j].to_string()));
                i = j;
            }
            c if ident_start(c) => {
                let mut j = i;
                while j < b.len() && (ident_char(b[j]) || (b[j] == b':' && b.get(j + 1) == Some(&b':'))) {
                    j += if b[j] == b':' { 2 } else { 1 };
                }
                out.push(Token::Ident(code[i..j].to_string()));
                i = j;
            }
            _ => {
                const PUNCT: &[&str] = &[
                    "//=", "//", "==", "!=", "<=", ">=", "|=", "+=", "-=", "*=", "/=", "%=", "?//", "<", ">", "(", ")",
                    "{", "}", "[", "]", ",", ":", "|", "?", "=", "+", "-", "*", "/", "%", "$", ";", "@",
                ];
                match PUNCT.iter().find(|p| code[i..].starts_with(**p)) {
                    Some(p) => {
                        out.push(Token::Punct(p));
                        i += p.len();
                    }
                    None => {
                        let c = code[i..].chars().next().unwrap_or(' ');
                        return Err(format!("{c:?} is not compiled"));
                    }
                }
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    /// The whole of `tokens` as one program.
    fn whole(tokens: Vec<Token>) -> Result<Node, String> {
        let mut p = Parser { tokens, at: 0 };
        let node = p.pipe()?;
        match p.peek() {
            None => Ok(node),
            Some(t) => Err(format!("{} is not compiled", t.describe())),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat(&mut self, p: &'static str) -> bool {
        if self.peek() == Some(&Token::Punct(p)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(x)) if x == w) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &'static str) -> Result<(), String> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(match self.peek() {
                Some(t) => format!("{} is not compiled", t.describe()),
                None => "the program ends early".to_string(),
            })
        }
    }

    fn expect_word(&mut self, w: &str) -> Result<(), String> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(format!("expected `{w}`"))
        }
    }

    /// `f | g | h`: the loosest binding, as in jq.
    fn pipe(&mut self) -> Result<Node, String> {
        let mut node = self.alt()?;
        while self.eat("|") {
            node = Node::Pipe(Box::new(node), Box::new(self.alt()?));
        }
        if matches!(self.peek(), Some(Token::Punct(","))) {
            return Err("`,` (more than one output) is not compiled".to_string());
        }
        Ok(node)
    }

    /// `f // g`, right-associative as in jq.
    fn alt(&mut self) -> Result<Node, String> {
        let left = self.or()?;
        if self.eat("//") {
            let right = self.alt()?;
            return Ok(Node::Alt(Box::new(left), Box::new(right)));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.compare()?;
        while self.eat_word("and") {
            left = Node::And(Box::new(left), Box::new(self.compare()?));
        }
        Ok(left)
    }

    /// Comparisons do not chain in jq: `a < b < c` does not compile there.
    fn compare(&mut self) -> Result<Node, String> {
        let left = self.postfix()?;
        let op = match self.peek() {
            Some(Token::Punct("==")) => Op::Eq,
            Some(Token::Punct("!=")) => Op::Ne,
            Some(Token::Punct("<")) => Op::Lt,
            Some(Token::Punct("<=")) => Op::Le,
            Some(Token::Punct(">")) => Op::Gt,
            Some(Token::Punct(">=")) => Op::Ge,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.postfix()?;
        Ok(Node::Compare(Box::new(left), op, Box::new(right)))
    }

    /// A term and the path steps after it: `.a.b`, `(f).c`, `.a[0]`.
    fn postfix(&mut self) -> Result<Node, String> {
        let mut node = self.term()?;
        loop {
            let step = match self.peek() {
                Some(Token::Field(f)) => {
                    let s = Step::Key(f.clone());
                    self.at += 1;
                    s
                }
                Some(Token::Dot) if matches!(self.tokens.get(self.at + 1), Some(Token::Str(_))) => {
                    self.at += 1;
                    let Some(Token::Str(s)) = self.next() else {
                        unreachable!()
                    };
                    Step::Key(string_literal(&s)?)
                }
                Some(Token::Punct("[")) => {
                    self.at += 1;
                    let s = self.bracket_step()?;
                    self.expect("]")?;
                    s
                }
                Some(Token::Dot) if matches!(self.tokens.get(self.at + 1), Some(Token::Punct("["))) => {
                    self.at += 2;
                    let s = self.bracket_step()?;
                    self.expect("]")?;
                    s
                }
                Some(Token::Punct("?")) => return Err("`?` (errors suppressed) is not compiled".to_string()),
                _ => return Ok(node),
            };
            node = match node {
                Node::Path(mut steps) => {
                    steps.push(step);
                    Node::Path(steps)
                }
                // Indexing a computed value: not compiled (rare in
                // mappings, and it would need its own evaluation).
                _ => return Err("indexing a computed value is not compiled".to_string()),
            };
        }
    }

    /// Inside `[...]` after a path: a string key or an integer index.
    fn bracket_step(&mut self) -> Result<Step, String> {
        let negative = self.eat("-");
        match self.next() {
            Some(Token::Str(s)) if !negative => Ok(Step::Key(string_literal(&s)?)),
            Some(Token::Num(n)) => match n.parse::<i64>() {
                Ok(i) => Ok(Step::Index(if negative { -i } else { i })),
                Err(_) => Err(format!("the index {n} is not compiled")),
            },
            Some(t) => Err(format!("{} inside [] is not compiled", t.describe())),
            None => Err("the program ends early".to_string()),
        }
    }

    fn term(&mut self) -> Result<Node, String> {
        match self.next() {
            Some(Token::Dot) => {
                if matches!(self.peek(), Some(Token::Str(_))) {
                    let Some(Token::Str(s)) = self.next() else {
                        unreachable!()
                    };
                    return Ok(Node::Path(vec![Step::Key(string_literal(&s)?)]));
                }
                Ok(Node::Path(Vec::new()))
            }
            Some(Token::Field(f)) => Ok(Node::Path(vec![Step::Key(f)])),
            Some(Token::Str(s)) => literal(&s),
            Some(Token::Num(n)) => literal(&n),
            Some(Token::Punct("-")) => match self.next() {
                Some(Token::Num(n)) => literal(&format!("-{n}")),
                _ => Err("`-` (arithmetic) is not compiled".to_string()),
            },
            Some(Token::Ident(w)) if matches!(w.as_str(), "null" | "true" | "false") => literal(&w),
            Some(Token::Punct("$")) => match self.next() {
                Some(Token::Ident(v)) if v == "message_id" => Ok(Node::MessageId),
                _ => Err("variables other than `$message_id` are not compiled".to_string()),
            },
            Some(Token::Ident(w)) if w == "if" => self.if_rest(),
            Some(Token::Ident(w)) if Builtin::named(&w).is_some() || matches!(w.as_str(), "map" | "select") => {
                self.function(&w)
            }
            Some(Token::Template(pieces)) => {
                let mut parts = Vec::with_capacity(pieces.len());
                for piece in pieces {
                    parts.push(match piece {
                        Piece::Text(t) => Part::Text(string_literal(&format!("\"{t}\""))?),
                        Piece::Code(tokens) => Part::Value(Parser::whole(tokens)?),
                    });
                }
                Ok(Node::Format(parts))
            }
            Some(Token::Punct("(")) => {
                let node = self.pipe()?;
                self.expect(")")?;
                Ok(node)
            }
            Some(Token::Punct("{")) => self.object(),
            Some(Token::Punct("[")) => {
                let mut items = Vec::new();
                if self.eat("]") {
                    return Ok(Node::Array(items));
                }
                loop {
                    items.push(self.alt()?);
                    if self.eat("]") {
                        return Ok(Node::Array(items));
                    }
                    self.expect(",")?;
                }
            }
            Some(t) => Err(format!("{} is not compiled", t.describe())),
            None => Err("the program ends early".to_string()),
        }
    }

    /// A builtin applied to the input (`not`), or `map(f)`, `select(f)`.
    fn function(&mut self, name: &str) -> Result<Node, String> {
        if let Some(b) = Builtin::named(name) {
            return Ok(Node::Builtin(b));
        }
        if !self.eat("(") {
            return Err(format!("`{name}` without its argument is not compiled"));
        }
        let f = Box::new(self.pipe()?);
        self.expect(")")?;
        Ok(if name == "map" { Node::Map(f) } else { Node::Select(f) })
    }

    /// After `if`: `c then t (elif c then t)* (else e)? end`.
    fn if_rest(&mut self) -> Result<Node, String> {
        let cond = self.pipe()?;
        self.expect_word("then")?;
        let then = self.pipe()?;
        let otherwise = if self.eat_word("elif") {
            // The rest of the chain, which consumes the one `end`.
            self.if_rest()?
        } else if self.eat_word("else") {
            let e = self.pipe()?;
            self.expect_word("end")?;
            e
        } else {
            // jq 1.7: `if c then t end` means `else .`.
            self.expect_word("end")?;
            Node::Path(Vec::new())
        };
        Ok(Node::If(Box::new(cond), Box::new(then), Box::new(otherwise)))
    }

    /// After `{`: `key: term`, `"key": term`, `key` (for `key: .key`).
    fn object(&mut self) -> Result<Node, String> {
        let mut entries = Vec::new();
        if self.eat("}") {
            return Ok(Node::Object(entries));
        }
        loop {
            let key = match self.next() {
                Some(Token::Ident(w)) if !is_keyword(&w) && !w.contains("::") => w,
                Some(Token::Str(s)) => string_literal(&s)?,
                Some(t) => return Err(format!("{} as an object key is not compiled", t.describe())),
                None => return Err("the program ends early".to_string()),
            };
            let value = if self.eat(":") {
                self.object_value()?
            } else {
                Node::Path(vec![Step::Key(key.clone())])
            };
            entries.push((key, value));
            if self.eat("}") {
                return Ok(Node::Object(entries));
            }
            self.expect(",")?;
        }
    }

    /// An object's value is a term with its path steps (jq's grammar):
    /// anything wider is written in parentheses.
    fn object_value(&mut self) -> Result<Node, String> {
        let node = self.postfix()?;
        match self.peek() {
            Some(Token::Punct(",")) | Some(Token::Punct("}")) => Ok(node),
            Some(t) => Err(format!("{} in an object value is not compiled", t.describe())),
            None => Err("the program ends early".to_string()),
        }
    }
}

/// A literal as jaq evaluates it: whatever it makes of `1.0`, `1e3` or
/// `"\u00e9"`, the compiled program makes too.
fn literal(code: &str) -> Result<Node, String> {
    let program =
        jq::Program::compile(code).map_err(|e| format!("the literal {code} does not compile: {}", e.message))?;
    let v = program
        .first(jaq_json::Val::Null)
        .ok()
        .flatten()
        .ok_or_else(|| format!("the literal {code} has no value"))?;
    let v = jq::to_json(&v)?;
    if check_output(&v, 0).is_err() {
        return Err(format!("the literal {code} is not compiled"));
    }
    Ok(Node::Literal(v))
}

fn string_literal(code: &str) -> Result<String, String> {
    match literal(code)? {
        Node::Literal(Value::String(s)) => Ok(s),
        _ => Err(format!("{code} is not a string")),
    }
}
