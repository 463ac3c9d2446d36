//! Consul's `?filter=` expressions (the go-bexpr language): parsing, checking the
//! selectors against the fields the endpoint's items have, and matching items. Pure.
//!
//! Grammar (go-bexpr's): `or` binds looser than `and`, `and` looser than `not`;
//! parentheses group. A match is `Sel == V`, `Sel != V`, `Sel contains V`, `Sel not
//! contains V`, `Sel matches "re"`, `Sel not matches "re"`, `Sel is empty`, `Sel is not
//! empty`, `V in Sel`, `V not in Sel`. A selector is a field path (`Service.Meta.env`,
//! `Node.Meta["rack"]`); a value is a quoted string (`"..."` with Go escapes, or
//! `` `raw` ``), a number, or a bare word (`passing`, `true`).
//!
//! Each item type says which selectors it has, with their kinds and how to read them, in
//! one table ([`Filterable::FIELDS`]), so a filter is checked before anything runs: an
//! unknown selector, an operator the field's kind does not take, a value that is not of
//! the field's kind, or a bad regular expression is refused with the reason (a 400).
//! Semantics follow go-bexpr: `==` compares whole values (a number field takes a number),
//! `contains`/`in` is substring on a string, membership on a list, key membership on a
//! map; `is empty` is length zero. A selector reaching through a list of records (a
//! service's `Checks.Status`) matches when any record does; the `not` forms are the
//! negation of their positive form (no record matches).

use std::collections::BTreeMap;

use regex_automata::meta::Regex;

use super::query::{Query, QueryResult};
use super::types::{Check, Node, Service, ServiceHealth};

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// It does not parse.
    #[error("Failed to parse filter: {0}")]
    Syntax(String),
    /// It names a field the endpoint's items do not have (Consul's words).
    #[error("Selector {0:?} is not valid")]
    UnknownSelector(String),
    /// The operator or value does not suit the field.
    #[error("Invalid filter: {0}")]
    Invalid(String),
    /// The endpoint takes no filter.
    #[error("this endpoint does not support filtering")]
    NotFilterable,
}

/// What a field holds, which decides the operators it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text.
    Str,
    /// A whole number.
    Int,
    /// `true` or `false`.
    Bool,
    /// A list of strings (tags).
    List,
    /// A string map (metadata, tagged addresses): a key selects a string.
    Map,
}

/// A field's value in one item.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    /// Text.
    Str(&'a str),
    /// A whole number.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// A list of strings.
    List(&'a [String]),
    /// A string map.
    Map(&'a BTreeMap<String, String>),
}

/// One selector an item type has: its path, its kind, and how to read it; `many` when it
/// reaches through a list of records (each read separately by `get_many`).
pub struct Field<T: 'static> {
    /// The selector, dotted (`Service.Meta`).
    pub path: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// How to read it from an item (fields through a list of records read every record).
    pub get: Getter<T>,
}

/// How a field is read.
pub enum Getter<T: 'static> {
    /// One value per item.
    One(for<'a> fn(&'a T) -> Val<'a>),
    /// One value per record of a list in the item.
    Many(for<'a> fn(&'a T) -> Vec<Val<'a>>),
}

/// An item type a filter applies to, with its selectors.
pub trait Filterable: Sized + 'static {
    /// Every selector it has (the one table a filter is checked against).
    const FIELDS: &'static [Field<Self>];
}

// ---------------------------------------------------------------------------------------
// Parsing.

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(String),
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Eq,
    Ne,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        match c {
            ' ' | '\t' | '\r' | '\n' => i += 1,
            '(' => (out.push((at, Token::LParen)), i += 1).1,
            ')' => (out.push((at, Token::RParen)), i += 1).1,
            '[' => (out.push((at, Token::LBracket)), i += 1).1,
            ']' => (out.push((at, Token::RBracket)), i += 1).1,
            '.' => (out.push((at, Token::Dot)), i += 1).1,
            '=' | '!' if chars.get(i + 1) == Some(&'=') => {
                out.push((at, if c == '=' { Token::Eq } else { Token::Ne }));
                i += 2;
            }
            '"' | '`' => {
                let mut j = i + 1;
                let mut text = String::new();
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(FilterError::Syntax(format!(
                                "1:{} unterminated string literal",
                                at + 1
                            )));
                        }
                        Some(&q) if q == c => break,
                        Some('\\') if c == '"' => {
                            let e = chars.get(j + 1).copied().unwrap_or('\\');
                            text.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                            j += 2;
                        }
                        Some(&ch) => {
                            text.push(ch);
                            j += 1;
                        }
                    }
                }
                out.push((at, Token::Str(text)));
                i = j + 1;
            }
            '-' | '0'..='9' => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                if text == "-" || text.parse::<f64>().is_err() {
                    return Err(FilterError::Syntax(format!(
                        "1:{} invalid number literal {text:?}",
                        at + 1
                    )));
                }
                out.push((at, Token::Num(text)));
                i = j;
            }
            c if c.is_ascii_alphabetic() => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || chars[j] == '_' || chars[j] == '/')
                {
                    j += 1;
                }
                out.push((at, Token::Word(chars[i..j].iter().collect())));
                i = j;
            }
            other => {
                return Err(FilterError::Syntax(format!(
                    "1:{} unexpected character {other:?}",
                    at + 1
                )));
            }
        }
    }
    Ok(out)
}

/// A parsed selector: its path segments.
type Path = Vec<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    Contains,
    Matches,
    IsEmpty,
}

#[derive(Debug)]
enum Ast {
    Or(Box<Ast>, Box<Ast>),
    And(Box<Ast>, Box<Ast>),
    Not(Box<Ast>),
    Match {
        path: Path,
        op: Op,
        negated: bool,
        value: Option<String>,
    },
}

const KEYWORDS: &[&str] = &[
    "and", "or", "not", "in", "contains", "matches", "is", "empty",
];

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn peek_word(&self, offset: usize) -> Option<&str> {
        match self.tokens.get(self.at + offset) {
            Some((_, Token::Word(w))) => Some(w),
            _ => None,
        }
    }

    fn error(&self, expected: &str) -> FilterError {
        let (pos, found) = match self.tokens.get(self.at) {
            Some((pos, t)) => (pos + 1, format!("{t:?}")),
            None => (self.len + 1, "the end".to_string()),
        };
        FilterError::Syntax(format!("1:{pos} expected {expected}, found {found}"))
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if self.peek_word(0) == Some(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Ast, FilterError> {
        let left = self.and()?;
        if self.eat_word("or") {
            return Ok(Ast::Or(Box::new(left), Box::new(self.or()?)));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Ast, FilterError> {
        let left = self.not()?;
        if self.eat_word("and") {
            return Ok(Ast::And(Box::new(left), Box::new(self.and()?)));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Ast, FilterError> {
        if self.eat_word("not") {
            return Ok(Ast::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Token::RParen) {
                return Err(self.error("\")\" (unmatched parentheses)"));
            }
            self.at += 1;
            return Ok(inner);
        }
        self.matching()
    }

    fn selector(&mut self) -> Result<Path, FilterError> {
        let mut path = match self.peek() {
            Some(Token::Word(w)) if !KEYWORDS.contains(&w.as_str()) => vec![w.clone()],
            _ => return Err(self.error("a selector")),
        };
        self.at += 1;
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.at += 1;
                    match self.peek() {
                        Some(Token::Word(w) | Token::Num(w)) => path.push(w.clone()),
                        _ => return Err(self.error("a field name after \".\"")),
                    }
                    self.at += 1;
                }
                Some(Token::LBracket) => {
                    self.at += 1;
                    let Some(Token::Str(key)) = self.peek().cloned() else {
                        return Err(self.error("a quoted index"));
                    };
                    self.at += 1;
                    if self.peek() != Some(&Token::RBracket) {
                        return Err(self.error("\"]\" (unclosed index expression)"));
                    }
                    self.at += 1;
                    path.push(key);
                }
                _ => return Ok(path),
            }
        }
    }

    fn value(&mut self) -> Result<String, FilterError> {
        match self.peek().cloned() {
            Some(Token::Str(s) | Token::Num(s)) => {
                self.at += 1;
                Ok(s)
            }
            Some(Token::Word(w)) if !KEYWORDS.contains(&w.as_str()) => {
                Ok(self.selector()?.join("."))
            }
            _ => Err(self.error("a value")),
        }
    }

    fn matching(&mut self) -> Result<Ast, FilterError> {
        // `V in Sel` / `V not in Sel`: a value first.
        let value_first = match self.peek() {
            Some(Token::Str(_) | Token::Num(_)) => true,
            Some(Token::Word(_)) => {
                let save = self.at;
                let _ = self.selector();
                let value_first = matches!(
                    (self.peek_word(0), self.peek_word(1)),
                    (Some("in"), _) | (Some("not"), Some("in"))
                );
                self.at = save;
                value_first
            }
            _ => false,
        };
        if value_first {
            let value = self.value()?;
            let negated = self.eat_word("not");
            if !self.eat_word("in") {
                return Err(self.error("\"in\""));
            }
            let path = self.selector()?;
            return Ok(Ast::Match {
                path,
                op: Op::Contains,
                negated,
                value: Some(value),
            });
        }
        let path = self.selector()?;
        let (op, negated) = match self.peek() {
            Some(Token::Eq) => (Op::Equal, false),
            Some(Token::Ne) => (Op::Equal, true),
            Some(Token::Word(w)) => match w.as_str() {
                "contains" => (Op::Contains, false),
                "matches" => (Op::Matches, false),
                "not" => match self.peek_word(1) {
                    Some("contains") => (Op::Contains, true),
                    Some("matches") => (Op::Matches, true),
                    _ => return Err(self.error("an operator")),
                },
                "is" => {
                    self.at += 1;
                    let negated = self.eat_word("not");
                    if !self.eat_word("empty") {
                        return Err(self.error("\"empty\""));
                    }
                    return Ok(Ast::Match {
                        path,
                        op: Op::IsEmpty,
                        negated,
                        value: None,
                    });
                }
                _ => return Err(self.error("an operator")),
            },
            _ => return Err(self.error("an operator (==, !=, contains, matches, is)")),
        };
        self.at += if negated && op != Op::Equal { 2 } else { 1 };
        let value = self.value()?;
        Ok(Ast::Match {
            path,
            op,
            negated,
            value: Some(value),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Checking against an item type and matching.

/// What a checked match compares with.
enum Operand {
    None,
    Str(String),
    Int(i64),
    Bool(bool),
    Regex(Box<Regex>),
}

enum Node2<T: 'static> {
    Or(Box<Node2<T>>, Box<Node2<T>>),
    And(Box<Node2<T>>, Box<Node2<T>>),
    Not(Box<Node2<T>>),
    Match {
        field: &'static Field<T>,
        key: Option<String>,
        op: Op,
        negated: bool,
        operand: Operand,
    },
}

/// A filter checked against item type `T`, ready to match items.
pub struct Filter<T: Filterable> {
    root: Node2<T>,
}

impl<T: Filterable> std::fmt::Debug for Filter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filter(..)")
    }
}

impl<T: Filterable> Filter<T> {
    /// Parses `src` and checks it against `T`'s selectors.
    pub fn parse(src: &str) -> Result<Filter<T>, FilterError> {
        let tokens = tokenize(src)?;
        if tokens.is_empty() {
            return Err(FilterError::Syntax("the filter is empty".into()));
        }
        let mut p = Parser {
            tokens,
            at: 0,
            len: src.chars().count(),
        };
        let ast = p.or()?;
        if p.at != p.tokens.len() {
            return Err(p.error("\"and\", \"or\" or the end"));
        }
        Ok(Filter {
            root: check::<T>(ast)?,
        })
    }

    /// Whether `item` matches.
    pub fn matches(&self, item: &T) -> bool {
        eval(&self.root, item)
    }
}

fn check<T: Filterable>(ast: Ast) -> Result<Node2<T>, FilterError> {
    Ok(match ast {
        Ast::Or(a, b) => Node2::Or(Box::new(check(*a)?), Box::new(check(*b)?)),
        Ast::And(a, b) => Node2::And(Box::new(check(*a)?), Box::new(check(*b)?)),
        Ast::Not(a) => Node2::Not(Box::new(check(*a)?)),
        Ast::Match {
            path,
            op,
            negated,
            value,
        } => {
            let joined = path.join(".");
            let (field, key) =
                resolve::<T>(&path).ok_or(FilterError::UnknownSelector(joined.clone()))?;
            let kind = if key.is_some() { Kind::Str } else { field.kind };
            let invalid = |what: &str| Err(FilterError::Invalid(format!("{what} ({joined})")));
            let raw = value.unwrap_or_default();
            let operand = match (op, kind) {
                (Op::IsEmpty, Kind::Int | Kind::Bool) => {
                    return invalid("\"is empty\" needs a string, list or map selector");
                }
                (Op::IsEmpty, _) => Operand::None,
                (Op::Equal, Kind::Str) => Operand::Str(raw),
                (Op::Equal, Kind::Int) => match raw.parse() {
                    Ok(n) => Operand::Int(n),
                    Err(_) => return invalid(&format!("{raw:?} is not a whole number")),
                },
                (Op::Equal, Kind::Bool) => match raw.as_str() {
                    "true" => Operand::Bool(true),
                    "false" => Operand::Bool(false),
                    _ => return invalid(&format!("{raw:?} is not true or false")),
                },
                (Op::Equal, Kind::List | Kind::Map) => {
                    return invalid("== and != compare single values: use \"in\" or \"contains\"");
                }
                (Op::Contains, Kind::Str | Kind::List | Kind::Map) => Operand::Str(raw),
                (Op::Contains, _) => {
                    return invalid("\"in\" and \"contains\" need a string, list or map selector");
                }
                (Op::Matches, Kind::Str) => match Regex::new(&raw) {
                    Ok(re) => Operand::Regex(Box::new(re)),
                    Err(e) => {
                        return invalid(&format!(
                            "failed to compile regular expression {raw:?}: {e}"
                        ));
                    }
                },
                (Op::Matches, _) => return invalid("\"matches\" needs a string selector"),
            };
            Node2::Match {
                field,
                key,
                op,
                negated,
                operand,
            }
        }
    })
}

/// The field `path` names, and the map key after it if it reaches into a map.
fn resolve<T: Filterable>(path: &[String]) -> Option<(&'static Field<T>, Option<String>)> {
    let joined = path.join(".");
    if let Some(f) = T::FIELDS.iter().find(|f| f.path == joined) {
        return Some((f, None));
    }
    let (key, head) = path.split_last()?;
    let head = head.join(".");
    T::FIELDS
        .iter()
        .find(|f| f.path == head && f.kind == Kind::Map)
        .map(|f| (f, Some(key.clone())))
}

fn eval<T: Filterable>(node: &Node2<T>, item: &T) -> bool {
    match node {
        Node2::Or(a, b) => eval(a, item) || eval(b, item),
        Node2::And(a, b) => eval(a, item) && eval(b, item),
        Node2::Not(a) => !eval(a, item),
        Node2::Match {
            field,
            key,
            op,
            negated,
            operand,
        } => {
            let one = |v: Val<'_>| test(v, key.as_deref(), *op, operand);
            let hit = match &field.get {
                Getter::One(get) => one(get(item)),
                Getter::Many(get) => get(item).into_iter().any(one),
            };
            hit != *negated
        }
    }
}

fn test(v: Val<'_>, key: Option<&str>, op: Op, operand: &Operand) -> bool {
    let v = match (v, key) {
        (Val::Map(m), Some(k)) => Val::Str(m.get(k).map_or("", String::as_str)),
        (v, _) => v,
    };
    match (op, v, operand) {
        (Op::IsEmpty, Val::Str(s), _) => s.is_empty(),
        (Op::IsEmpty, Val::List(l), _) => l.is_empty(),
        (Op::IsEmpty, Val::Map(m), _) => m.is_empty(),
        (Op::Equal, Val::Str(s), Operand::Str(want)) => s == want,
        (Op::Equal, Val::Int(n), Operand::Int(want)) => n == *want,
        (Op::Equal, Val::Bool(b), Operand::Bool(want)) => b == *want,
        (Op::Contains, Val::Str(s), Operand::Str(want)) => s.contains(want.as_str()),
        (Op::Contains, Val::List(l), Operand::Str(want)) => l.iter().any(|x| x == want),
        (Op::Contains, Val::Map(m), Operand::Str(want)) => m.contains_key(want),
        (Op::Matches, Val::Str(s), Operand::Regex(re)) => re.is_match(s),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// The item types of the filterable endpoints: one table each.

const fn one<T>(path: &'static str, kind: Kind, get: for<'a> fn(&'a T) -> Val<'a>) -> Field<T> {
    Field {
        path,
        kind,
        get: Getter::One(get),
    }
}

const fn many<T>(
    path: &'static str,
    kind: Kind,
    get: for<'a> fn(&'a T) -> Vec<Val<'a>>,
) -> Field<T> {
    Field {
        path,
        kind,
        get: Getter::Many(get),
    }
}

fn int(n: u64) -> Val<'static> {
    Val::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// `catalog/nodes`: a node.
impl Filterable for Node {
    const FIELDS: &'static [Field<Node>] = &[
        one("ID", Kind::Str, |n| Val::Str(&n.id)),
        one("Node", Kind::Str, |n| Val::Str(&n.node)),
        one("Address", Kind::Str, |n| Val::Str(&n.address)),
        one("Datacenter", Kind::Str, |n| Val::Str(&n.datacenter)),
        one("TaggedAddresses", Kind::Map, |n| {
            Val::Map(&n.tagged_addresses)
        }),
        one("Meta", Kind::Map, |n| Val::Map(&n.meta)),
    ];
}

/// `catalog/service/:name` and `catalog/services` (filtered by instance, then grouped):
/// an instance with its node, in Consul's flat `ServiceNode` shape.
impl Filterable for (Node, Service) {
    const FIELDS: &'static [Field<(Node, Service)>] = &[
        one("ID", Kind::Str, |(n, _)| Val::Str(&n.id)),
        one("Node", Kind::Str, |(n, _)| Val::Str(&n.node)),
        one("Address", Kind::Str, |(n, _)| Val::Str(&n.address)),
        one("Datacenter", Kind::Str, |(n, _)| Val::Str(&n.datacenter)),
        one("TaggedAddresses", Kind::Map, |(n, _)| {
            Val::Map(&n.tagged_addresses)
        }),
        one("NodeMeta", Kind::Map, |(n, _)| Val::Map(&n.meta)),
        one("ServiceKind", Kind::Str, |_| Val::Str("")),
        one("ServiceID", Kind::Str, |(_, s)| Val::Str(&s.id)),
        one("ServiceName", Kind::Str, |(_, s)| Val::Str(&s.service)),
        one("ServiceTags", Kind::List, |(_, s)| Val::List(&s.tags)),
        one("ServiceAddress", Kind::Str, |(_, s)| Val::Str(&s.address)),
        one("ServiceTaggedAddresses", Kind::Map, |(_, s)| {
            Val::Map(&s.tagged_addresses)
        }),
        one("ServiceMeta", Kind::Map, |(_, s)| Val::Map(&s.meta)),
        one("ServicePort", Kind::Int, |(_, s)| {
            Val::Int(i64::from(s.port))
        }),
        one("ServiceWeights.Passing", Kind::Int, |(_, s)| {
            Val::Int(i64::from(s.weights.passing))
        }),
        one("ServiceWeights.Warning", Kind::Int, |(_, s)| {
            Val::Int(i64::from(s.weights.warning))
        }),
        one("ServiceEnableTagOverride", Kind::Bool, |(_, s)| {
            Val::Bool(s.enable_tag_override)
        }),
        one("CreateIndex", Kind::Int, |(_, s)| int(s.create_index)),
        one("ModifyIndex", Kind::Int, |(_, s)| int(s.modify_index)),
    ];
}

/// `catalog/node/:node` (each of the node's services) and `agent/services`: a service in
/// Consul's `NodeService`/`AgentService` shape.
impl Filterable for Service {
    const FIELDS: &'static [Field<Service>] = &[
        one("Kind", Kind::Str, |_| Val::Str("")),
        one("ID", Kind::Str, |s| Val::Str(&s.id)),
        one("Service", Kind::Str, |s| Val::Str(&s.service)),
        one("Tags", Kind::List, |s| Val::List(&s.tags)),
        one("Address", Kind::Str, |s| Val::Str(&s.address)),
        one("TaggedAddresses", Kind::Map, |s| {
            Val::Map(&s.tagged_addresses)
        }),
        one("Meta", Kind::Map, |s| Val::Map(&s.meta)),
        one("Port", Kind::Int, |s| Val::Int(i64::from(s.port))),
        one("Weights.Passing", Kind::Int, |s| {
            Val::Int(i64::from(s.weights.passing))
        }),
        one("Weights.Warning", Kind::Int, |s| {
            Val::Int(i64::from(s.weights.warning))
        }),
        one("EnableTagOverride", Kind::Bool, |s| {
            Val::Bool(s.enable_tag_override)
        }),
    ];
}

/// `health/node`, `health/checks`, `health/state`: a check.
impl Filterable for Check {
    const FIELDS: &'static [Field<Check>] = &[
        one("Node", Kind::Str, |c| Val::Str(&c.node)),
        one("CheckID", Kind::Str, |c| Val::Str(&c.check_id)),
        one("Name", Kind::Str, |c| Val::Str(&c.name)),
        one("Status", Kind::Str, |c| Val::Str(c.status.as_str())),
        one("Notes", Kind::Str, |c| Val::Str(&c.notes)),
        one("Output", Kind::Str, |c| Val::Str(&c.output)),
        one("ServiceID", Kind::Str, |c| Val::Str(&c.service_id)),
        one("ServiceName", Kind::Str, |c| Val::Str(&c.service_name)),
        one("ServiceTags", Kind::List, |c| Val::List(&c.service_tags)),
        one("Type", Kind::Str, |c| Val::Str(&c.kind)),
        one("CreateIndex", Kind::Int, |c| int(c.create_index)),
        one("ModifyIndex", Kind::Int, |c| int(c.modify_index)),
    ];
}

/// `health/service/:name`: an instance with its node and checks.
impl Filterable for ServiceHealth {
    const FIELDS: &'static [Field<ServiceHealth>] = &[
        one("Node.ID", Kind::Str, |h| Val::Str(&h.node.id)),
        one("Node.Node", Kind::Str, |h| Val::Str(&h.node.node)),
        one("Node.Address", Kind::Str, |h| Val::Str(&h.node.address)),
        one("Node.Datacenter", Kind::Str, |h| {
            Val::Str(&h.node.datacenter)
        }),
        one("Node.TaggedAddresses", Kind::Map, |h| {
            Val::Map(&h.node.tagged_addresses)
        }),
        one("Node.Meta", Kind::Map, |h| Val::Map(&h.node.meta)),
        one("Service.Kind", Kind::Str, |_| Val::Str("")),
        one("Service.ID", Kind::Str, |h| Val::Str(&h.service.id)),
        one("Service.Service", Kind::Str, |h| {
            Val::Str(&h.service.service)
        }),
        one("Service.Tags", Kind::List, |h| Val::List(&h.service.tags)),
        one("Service.Address", Kind::Str, |h| {
            Val::Str(&h.service.address)
        }),
        one("Service.TaggedAddresses", Kind::Map, |h| {
            Val::Map(&h.service.tagged_addresses)
        }),
        one("Service.Meta", Kind::Map, |h| Val::Map(&h.service.meta)),
        one("Service.Port", Kind::Int, |h| {
            Val::Int(i64::from(h.service.port))
        }),
        one("Service.Weights.Passing", Kind::Int, |h| {
            Val::Int(i64::from(h.service.weights.passing))
        }),
        one("Service.Weights.Warning", Kind::Int, |h| {
            Val::Int(i64::from(h.service.weights.warning))
        }),
        one("Service.EnableTagOverride", Kind::Bool, |h| {
            Val::Bool(h.service.enable_tag_override)
        }),
        many("Checks.Node", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.node)).collect()
        }),
        many("Checks.CheckID", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.check_id)).collect()
        }),
        many("Checks.Name", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.name)).collect()
        }),
        many("Checks.Status", Kind::Str, |h| {
            h.checks
                .iter()
                .map(|c| Val::Str(c.status.as_str()))
                .collect()
        }),
        many("Checks.Notes", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.notes)).collect()
        }),
        many("Checks.Output", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.output)).collect()
        }),
        many("Checks.ServiceID", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.service_id)).collect()
        }),
        many("Checks.ServiceName", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.service_name)).collect()
        }),
        many("Checks.ServiceTags", Kind::List, |h| {
            h.checks
                .iter()
                .map(|c| Val::List(&c.service_tags))
                .collect()
        }),
        many("Checks.Type", Kind::Str, |h| {
            h.checks.iter().map(|c| Val::Str(&c.kind)).collect()
        }),
    ];
}

// ---------------------------------------------------------------------------------------
// Applying a filter to a read's answer.

/// Checks `src` against the items `query` answers with (the HTTP edge refuses a bad filter
/// before anything is sent).
pub fn validate(query: &Query, src: &str) -> Result<(), FilterError> {
    match query {
        Query::Near { query, .. } => validate(query, src),
        Query::NodeServices { .. } => Filter::<Service>::parse(src).map(drop),
        Query::Nodes { .. } => Filter::<Node>::parse(src).map(drop),
        Query::Services { .. } | Query::ServiceNodes { .. } => {
            Filter::<(Node, Service)>::parse(src).map(drop)
        }
        Query::ServiceHealth { .. } => Filter::<ServiceHealth>::parse(src).map(drop),
        Query::ServiceChecks { .. } | Query::NodeChecks { .. } | Query::ChecksInState { .. } => {
            Filter::<Check>::parse(src).map(drop)
        }
        _ => Err(FilterError::NotFilterable),
    }
}

/// Keeps the items of `result` (of a filterable query's [`Query::for_filter`]) that match
/// `src`; `catalog/services` instances are grouped by name after filtering.
pub fn apply(query: &Query, result: QueryResult, src: &str) -> Result<QueryResult, FilterError> {
    fn keep<T: Filterable>(mut items: Vec<T>, src: &str) -> Result<Vec<T>, FilterError> {
        let f = Filter::<T>::parse(src)?;
        items.retain(|i| f.matches(i));
        Ok(items)
    }
    Ok(match (query, result) {
        (Query::Services { .. }, QueryResult::ServiceNodes(items)) => QueryResult::ServiceTags(
            super::query::group_tags(keep(items, src)?.iter().map(|(_, s)| s)),
        ),
        (_, QueryResult::Nodes(items)) => QueryResult::Nodes(keep(items, src)?),
        (_, QueryResult::ServiceNodes(items)) => QueryResult::ServiceNodes(keep(items, src)?),
        (_, QueryResult::Health(items)) => QueryResult::Health(keep(items, src)?),
        (_, QueryResult::Checks(items)) => QueryResult::Checks(keep(items, src)?),
        (_, QueryResult::NodeServices(found)) => QueryResult::NodeServices(match found {
            Some((node, services)) => Some((node, keep(services, src)?)),
            None => None,
        }),
        _ => return Err(FilterError::NotFilterable),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::types::{HealthStatus, Weights};

    fn entry(
        node: &str,
        rack: &str,
        tags: &[&str],
        port: u16,
        statuses: &[HealthStatus],
    ) -> ServiceHealth {
        ServiceHealth {
            node: Node {
                node: node.into(),
                meta: [("rack".to_string(), rack.to_string())].into(),
                ..Node::default()
            },
            service: Service {
                node: node.into(),
                id: format!("web-{node}"),
                service: "web".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                address: String::new(),
                port,
                tagged_addresses: BTreeMap::new(),
                meta: [("env".to_string(), "prod".to_string())].into(),
                weights: Weights::default(),
                enable_tag_override: false,
                create_index: 1,
                modify_index: 1,
            },
            checks: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| Check {
                    node: node.into(),
                    check_id: format!("c{i}"),
                    status: *s,
                    ..Check::default()
                })
                .collect(),
        }
    }

    fn names(src: &str, items: &[ServiceHealth]) -> Vec<String> {
        let f = Filter::<ServiceHealth>::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        items
            .iter()
            .filter(|i| f.matches(i))
            .map(|i| i.node.node.clone())
            .collect()
    }

    #[test]
    fn every_operator_matches_as_go_bexpr_does() {
        use HealthStatus::*;
        let items = vec![
            entry("a", "r1", &["v1", "primary"], 80, &[Passing, Passing]),
            entry("b", "r2", &["v2"], 8080, &[Passing, Critical]),
            entry("c", "", &[], 443, &[]),
        ];
        let cases: &[(&str, &[&str])] = &[
            ("Node.Node == a", &["a"]),
            ("Node.Node == \"a\"", &["a"]),
            ("Node.Node != `a`", &["b", "c"]),
            ("\"v1\" in Service.Tags", &["a"]),
            ("v2 in Service.Tags", &["b"]),
            ("\"v1\" not in Service.Tags", &["b", "c"]),
            ("Service.Tags contains primary", &["a"]),
            ("Service.Tags not contains primary", &["b", "c"]),
            ("Service.Tags is empty", &["c"]),
            ("Service.Tags is not empty", &["a", "b"]),
            ("Node.Meta.rack == r2", &["b"]),
            ("Node.Meta[\"rack\"] == r1", &["a"]),
            ("Node.Meta.rack is empty", &["c"]),
            ("rack in Node.Meta", &["a", "b", "c"]),
            ("Node.Meta.missing is empty", &["a", "b", "c"]),
            ("Node.Node matches \"^[ab]$\"", &["a", "b"]),
            ("Node.Node not matches \"^[ab]$\"", &["c"]),
            ("Node.Node contains \"b\"", &["b"]),
            ("Service.Port == 8080", &["b"]),
            ("Service.EnableTagOverride == false", &["a", "b", "c"]),
            ("Checks.Status == critical", &["b"]),
            ("Checks.Status != critical", &["a", "c"]),
            ("Checks is empty", &[]),
            (
                "Service.Meta.env == prod and not Node.Node == b",
                &["a", "c"],
            ),
            (
                "Node.Node == a or Node.Node == c and Service.Port == 443",
                &["a", "c"],
            ),
            (
                "(Node.Node == a or Node.Node == c) and Service.Port == 80",
                &["a"],
            ),
            ("not not Node.Node == a", &["a"]),
        ];
        for (src, want) in cases {
            if *src == "Checks is empty" {
                assert!(matches!(
                    Filter::<ServiceHealth>::parse(src),
                    Err(FilterError::UnknownSelector(_))
                ));
                continue;
            }
            assert_eq!(names(src, &items), *want, "{src}");
        }
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        let refused = |src: &str| Filter::<ServiceHealth>::parse(src).unwrap_err();
        assert_eq!(
            refused("Nope == 1"),
            FilterError::UnknownSelector("Nope".into())
        );
        assert_eq!(
            refused("Service.Nope == 1"),
            FilterError::UnknownSelector("Service.Nope".into())
        );
        for (src, needle) in [
            ("Node.Node ==", "expected a value"),
            ("Node.Node = a", "unexpected character"),
            ("(Node.Node == a", "unmatched parentheses"),
            ("Node.Node == \"a", "unterminated string"),
            ("Node.Node == a and", "expected a selector"),
            ("Node.Node == a b", "expected \"and\""),
            ("", "empty"),
            ("Service.Port == abc", "not a whole number"),
            ("Service.Port is empty", "is empty"),
            ("Service.Tags == v1", "use \"in\""),
            ("Node.Node matches \"(\"", "regular expression"),
            ("Service.EnableTagOverride == maybe", "true or false"),
            ("Node.Meta[rack] == x", "quoted index"),
        ] {
            let e = refused(src).to_string();
            assert!(e.contains(needle), "{src}: {e}");
        }
    }

    #[test]
    fn each_endpoint_has_its_own_selectors() {
        let all = Query::Nodes {
            node_meta: Default::default(),
        };
        assert!(validate(&all, "Meta.rack == r1").is_ok());
        assert!(validate(&all, "ServiceName == web").is_err());
        let services = Query::Services {
            node_meta: Default::default(),
        };
        assert!(validate(&services, "ServiceTags contains v1 and NodeMeta.rack == r1").is_ok());
        let checks = Query::ChecksInState { state: None };
        assert!(validate(&checks, "Status == passing and ServiceTags contains v1").is_ok());
        assert!(validate(&Query::KvGet { key: "k".into() }, "Key == k").is_err());
    }
}
