//! What Envoy's RE2 refuses that Rust's `regex` accepts, checked before a regex reaches a
//! proxy (which would NACK the whole route configuration, for every AccessPoint on the port).
//!
//! - Repetition counts above 1000, alone or multiplied through nesting (`(x{500}){100}`).
//! - Programs larger than Envoy's `re2.max_program_size.error_level` (100 by default). The
//!   size here is a lower bound of RE2's (each class counts as one instruction, where RE2
//!   compiles a UTF-8 class into several), so no regex Envoy accepts is refused; gross cases
//!   such as `.{0,1000}` are caught.
//! - Syntax RE2 does not have, which it reads as literal characters, so Envoy would match
//!   something other than what the operator wrote: class set operations (`[a-z&&[^aeiou]]`)
//!   and word-start/end assertions (`\<`, `\b{start}`).

use regex_syntax::ast::{self, Ast};
use regex_syntax::hir::{Hir, HirKind};

/// RE2's largest repetition count (`kMaxRepeat`).
const MAX_REPEAT: u64 = 1000;
/// Envoy's default `re2.max_program_size.error_level`.
pub const MAX_PROGRAM_SIZE: u64 = 100;

/// Why Envoy's RE2 would refuse `pattern`, if it would.
pub fn refusal(pattern: &str) -> Option<String> {
    let ast = ast::parse::Parser::new().parse(pattern).ok()?;
    if let Some(why) = unsupported_syntax(&ast) {
        return Some(why);
    }
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    if repetition(&hir) > MAX_REPEAT {
        return Some(format!(
            "repetition counts multiply past {MAX_REPEAT} (RE2's limit)"
        ));
    }
    // Match and Fail instructions, and the capture around the whole pattern.
    let size = program_size(&hir).saturating_add(4);
    (size > MAX_PROGRAM_SIZE).then(|| {
        format!("too complex for Envoy's RE2: a program of at least {size} instructions, over its limit of {MAX_PROGRAM_SIZE}")
    })
}

/// The product of nested repetition counts (the maximum, or the minimum when unbounded).
fn repetition(hir: &Hir) -> u64 {
    match hir.kind() {
        HirKind::Repetition(r) => {
            let count = u64::from(r.max.unwrap_or(r.min)).max(1);
            count.saturating_mul(repetition(&r.sub))
        }
        HirKind::Capture(c) => repetition(&c.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => {
            subs.iter().map(repetition).max().unwrap_or(1)
        }
        _ => 1,
    }
}

/// A lower bound of the instructions RE2 compiles `hir` into.
fn program_size(hir: &Hir) -> u64 {
    match hir.kind() {
        HirKind::Empty => 0,
        HirKind::Literal(l) => l.0.len() as u64,
        HirKind::Class(_) | HirKind::Look(_) => 1,
        HirKind::Capture(c) => program_size(&c.sub).saturating_add(2),
        HirKind::Concat(subs) => subs.iter().map(program_size).fold(0, u64::saturating_add),
        HirKind::Alternation(subs) => subs
            .iter()
            .map(program_size)
            .fold(subs.len() as u64 - 1, u64::saturating_add),
        HirKind::Repetition(r) => {
            let sub = program_size(&r.sub);
            let min = u64::from(r.min);
            match r.max {
                // x{n,m}: n copies, then m-n optional ones (an Alt each).
                Some(max) => {
                    let max = u64::from(max);
                    sub.saturating_mul(max).saturating_add(max - min.min(max))
                }
                // x{n,}: n copies, the last looping (an Alt).
                None => sub.saturating_mul(min.max(1)).saturating_add(1),
            }
        }
    }
}

fn unsupported_syntax(ast: &Ast) -> Option<String> {
    let mut found = None;
    let mut visit = |ast: &Ast| match ast {
        Ast::ClassBracketed(class) if has_set_operation(&class.kind) => {
            found.get_or_insert_with(|| "class set operations (&&, --, ~~) are not RE2 syntax: Envoy would read them as literal characters and match something else".to_owned());
        }
        Ast::Assertion(a) if word_edge(&a.kind) => {
            found.get_or_insert_with(|| "word start/end assertions (\\<, \\>, \\b{start}) are not RE2 syntax: Envoy would read them as literal characters and match something else".to_owned());
        }
        _ => {}
    };
    walk(ast, &mut visit);
    found
}

fn walk(ast: &Ast, visit: &mut impl FnMut(&Ast)) {
    visit(ast);
    match ast {
        Ast::Repetition(r) => walk(&r.ast, visit),
        Ast::Group(g) => walk(&g.ast, visit),
        Ast::Alternation(a) => a.asts.iter().for_each(|a| walk(a, visit)),
        Ast::Concat(c) => c.asts.iter().for_each(|a| walk(a, visit)),
        _ => {}
    }
}

fn has_set_operation(set: &ast::ClassSet) -> bool {
    match set {
        ast::ClassSet::BinaryOp(_) => true,
        ast::ClassSet::Item(ast::ClassSetItem::Bracketed(inner)) => has_set_operation(&inner.kind),
        ast::ClassSet::Item(ast::ClassSetItem::Union(u)) => u.items.iter().any(|item| {
            matches!(item, ast::ClassSetItem::Bracketed(inner) if has_set_operation(&inner.kind))
        }),
        ast::ClassSet::Item(_) => false,
    }
}

fn word_edge(kind: &ast::AssertionKind) -> bool {
    use ast::AssertionKind::*;
    matches!(
        kind,
        WordBoundaryStart
            | WordBoundaryEnd
            | WordBoundaryStartAngle
            | WordBoundaryEndAngle
            | WordBoundaryStartHalf
            | WordBoundaryEndHalf
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_envoy_accepts_passes() {
        for ok in [
            "^/re/[0-9]+$",
            "/api/v[12]/.*",
            "/shop/(cart|checkout)/[a-z]+",
            "x{50}",
            "[a-z&]",
        ] {
            assert_eq!(refusal(ok), None, "{ok}");
        }
    }

    #[test]
    fn what_envoy_refuses_is_named() {
        for (bad, why) in [
            ("/(x{500}){100}", "multiply"),
            ("(a{2}){501}", "multiply"),
            (".{0,1000}", "too complex"),
            ("x{1000}", "too complex"),
            ("/(x{10}){100}", "too complex"),
            ("(abcdefghij){11}", "too complex"),
            ("[a-z&&[^aeiou]]", "class set"),
            ("[a-z--b]", "class set"),
            (r"\<word\>", "word start"),
            (r"\b{start}x", "word start"),
        ] {
            let got = refusal(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got:?}");
        }
    }
}
