//! Text that came from a cluster, made safe to show on one line of a terminal.
//!
//! What a remote answers travels into admission warnings (which kubectl prints on the terminal
//! of whoever labelled a namespace), Events, MeshCluster status and `kubectl mesh` output. A
//! control character in it could clear the screen, move the cursor over earlier lines or
//! recolour them, a bidirectional override could make a line read other than it is, and a
//! Unicode line separator or zero-width mark could split or hide text; each is shown escaped
//! instead (`\u{1b}`), and line breaks become spaces so that one error stays one line.

use std::borrow::Cow;

/// `text` on one line, every control character, invisible formatting mark and Unicode line
/// separator escaped.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_care) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if needs_care(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// How many names a one-line message shows before `and N more`, where it has no reason to
/// show more.
pub const FEW: usize = 5;

/// [`first_few`] of a whole list, [`FEW`] shown.
pub fn few<S: AsRef<str>>(names: &[S]) -> String {
    first_few(names, names.len(), FEW)
}

/// The first `at_most` of `names`, comma-separated, then `and N more` for the rest of
/// `total` (which may exceed `names`: a list that was cut short already). A line stays a line
/// however many there are.
pub fn first_few<S: AsRef<str>>(names: &[S], total: usize, at_most: usize) -> String {
    let shown: Vec<&str> = names.iter().take(at_most).map(AsRef::as_ref).collect();
    match total.saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// `text` cut to at most `max_bytes` (the limit of the field it goes to: an Event's note, a
/// condition's message, a warning), on a character boundary, ending with `…` when cut.
pub fn cut(mut text: String, max_bytes: usize) -> String {
    const MARK: &str = "…";
    if text.len() > max_bytes {
        let mut end = max_bytes.saturating_sub(MARK.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(MARK);
    }
    text
}

/// `text` in double quotes as a message quotes what someone else chose (a name or a URL in a
/// stored kubeconfig, which may be of any length): [`one_line`], at most `max_bytes` of it
/// ([`cut`]), escaped as `Debug` escapes a string.
pub fn quoted(text: &str, max_bytes: usize) -> String {
    format!("{:?}", cut(one_line(text).into_owned(), max_bytes))
}

fn needs_care(c: char) -> bool {
    // `is_control` covers C0, DEL and C1 (where the 8-bit CSI lives).
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_few_says_how_many_more() {
        assert_eq!(first_few(&["a", "b"], 2, 5), "a, b");
        assert_eq!(first_few(&["a", "b", "c"], 3, 2), "a, b and 1 more");
        // A list cut short already: the total counts what it left out.
        assert_eq!(first_few(&["a", "b"], 40, 5), "a, b and 38 more");
        assert_eq!(first_few::<&str>(&[], 0, 5), "");
        assert_eq!(
            few(&["a", "b", "c", "d", "e", "f", "g"]),
            "a, b, c, d, e and 2 more"
        );
    }

    #[test]
    fn cut_keeps_within_the_bytes_on_a_character_boundary() {
        assert_eq!(cut("short".to_owned(), 5), "short");
        assert_eq!(cut("abcdefgh".to_owned(), 6), "abc…");
        // Two bytes a character: three fit before the three bytes of the mark.
        assert_eq!(cut("é".repeat(100), 10), "ééé…");
    }

    #[test]
    fn quoted_is_one_line_and_bounded() {
        assert_eq!(quoted("east", 10), r#""east""#);
        assert_eq!(quoted("a\nb\"c", 10), r#""a b\"c""#);
        assert_eq!(quoted(&"x".repeat(1000), 10), r#""xxxxxxx…""#);
    }

    #[test]
    fn plain_text_is_kept_as_it_is() {
        let text = "403 Forbidden: namespaces \"shop\" is forbidden — «café»";
        assert!(matches!(one_line(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn terminal_sequences_are_escaped_and_lines_joined() {
        let hostile = "boom\x1b[2J\x1b]0;owned\x07\r\nnext\tcell\u{9b}31m";
        let shown = one_line(hostile);
        assert_eq!(
            shown,
            "boom\\u{1b}[2J\\u{1b}]0;owned\\u{7}  next cell\\u{9b}31m"
        );
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }

    #[test]
    fn bidirectional_overrides_are_escaped() {
        assert_eq!(one_line("a\u{202e}cba"), "a\\u{202e}cba");
        assert_eq!(one_line("x\u{2066}y"), "x\\u{2066}y");
        // Line and paragraph separators break a line as \n does; zero-width marks hide text.
        assert_eq!(one_line("a\u{2028}b\u{200b}"), "a\\u{2028}b\\u{200b}");
    }
}
