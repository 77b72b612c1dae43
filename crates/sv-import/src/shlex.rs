//! A faithful model of Python's `shlex.shlex` tokenizer, the one supervisord uses twice.
//!
//! supervisord splits `command=` with `shlex.split` (POSIX mode, whitespace-split, no comments)
//! and `environment=` with `shlex.shlex(value, posix=...)` plus extra word characters (Python's
//! `supervisor.datatypes.dict_of_key_value_pairs`). Neither matches a POSIX shell exactly: in
//! double quotes a backslash only escapes `"` and `\` (so `"\$X"` stays `\$X`), a
//! backslash-newline is kept as a newline, and in the environment tokenizer every character that
//! is not a word character is a token of its own (`a@b` is three tokens). Crates such as `shlex`
//! implement shell semantics, which differ on exactly those inputs, so this module reproduces the
//! state machine of CPython's `Lib/shlex.py` (`read_token`), including its legacy (non-POSIX) mode
//! that supervisord 4.2 uses for `environment=`.
//!
//! Invariant: for any input, the tokens equal what `list(shlex)` yields in CPython 3.11 with the
//! same settings, and an error is returned exactly where CPython raises `ValueError`.

/// How a [`Lexer`] is configured; the two constructors are the two supervisord uses.
#[derive(Debug, Clone)]
pub(crate) struct Lexer {
    posix: bool,
    whitespace_split: bool,
    commenters: &'static str,
    extra_wordchars: &'static str,
}

/// The two errors CPython's tokenizer raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShlexError {
    /// End of input inside quotes ("No closing quotation").
    NoClosingQuotation,
    /// End of input right after a backslash ("No escaped character").
    NoEscapedCharacter,
}

impl std::fmt::Display for ShlexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShlexError::NoClosingQuotation => f.write_str("no closing quotation"),
            ShlexError::NoEscapedCharacter => f.write_str("no character after the final backslash"),
        }
    }
}

/// Latin-1 letters that CPython adds to the word characters in POSIX mode.
const POSIX_LATIN1: &str = "ßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞ";
const WHITESPACE: &str = " \t\r\n";
const QUOTES: &str = "'\"";
const ESCAPE: char = '\\';
const ESCAPED_QUOTES: &str = "\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Whitespace,
    Word,
    Quote(char),
    Escape,
    Eof,
}

impl Lexer {
    /// `shlex.split(s)`: POSIX mode, split on whitespace only, no comments.
    pub(crate) fn split() -> Lexer {
        Lexer {
            posix: true,
            whitespace_split: true,
            commenters: "",
            extra_wordchars: "",
        }
    }

    /// `shlex.shlex(s, posix)` with `wordchars += '/.+-():'`, as `dict_of_key_value_pairs`.
    pub(crate) fn key_value(posix: bool) -> Lexer {
        Lexer {
            posix,
            whitespace_split: false,
            commenters: "#",
            extra_wordchars: "/.+-():",
        }
    }

    fn is_wordchar(&self, c: char) -> bool {
        c.is_ascii_alphanumeric()
            || c == '_'
            || self.extra_wordchars.contains(c)
            || (self.posix && POSIX_LATIN1.contains(c))
    }

    /// Every token of `input`, as `list(lexer)` would produce.
    pub(crate) fn tokens(&self, input: &str) -> Result<Vec<String>, ShlexError> {
        let mut cursor = Cursor {
            chars: input.chars().collect(),
            pos: 0,
            pushback: None,
        };
        let mut state = State::Whitespace;
        let mut out = Vec::new();
        loop {
            let (token, quoted) = self.read_token(&mut cursor, &mut state)?;
            // CPython's iterator stops at `eof`: None in POSIX mode (an unquoted empty token),
            // '' in legacy mode.
            if token.is_empty() && !(self.posix && quoted) {
                return Ok(out);
            }
            out.push(token);
        }
    }

    fn read_token(
        &self,
        cursor: &mut Cursor,
        state: &mut State,
    ) -> Result<(String, bool), ShlexError> {
        let mut token = String::new();
        let mut quoted = false;
        let mut escaped_state = State::Whitespace;
        loop {
            let c = cursor.next();
            match *state {
                State::Eof => {
                    token.clear();
                    break;
                }
                State::Whitespace => match c {
                    None => {
                        *state = State::Eof;
                        break;
                    }
                    Some(c) if WHITESPACE.contains(c) => {
                        if !token.is_empty() || (self.posix && quoted) {
                            break;
                        }
                    }
                    Some(c) if self.commenters.contains(c) => cursor.skip_line(),
                    Some(c) if self.posix && c == ESCAPE => {
                        escaped_state = State::Word;
                        *state = State::Escape;
                    }
                    Some(c) if self.is_wordchar(c) => {
                        token = c.to_string();
                        *state = State::Word;
                    }
                    Some(c) if QUOTES.contains(c) => {
                        if !self.posix {
                            token = c.to_string();
                        }
                        *state = State::Quote(c);
                    }
                    Some(c) if self.whitespace_split => {
                        token = c.to_string();
                        *state = State::Word;
                    }
                    Some(c) => {
                        token = c.to_string();
                        break;
                    }
                },
                State::Quote(q) => {
                    quoted = true;
                    match c {
                        None => return Err(ShlexError::NoClosingQuotation),
                        Some(c) if c == q => {
                            if !self.posix {
                                token.push(c);
                                *state = State::Whitespace;
                                break;
                            }
                            *state = State::Word;
                        }
                        Some(c) if self.posix && c == ESCAPE && ESCAPED_QUOTES.contains(q) => {
                            escaped_state = State::Quote(q);
                            *state = State::Escape;
                        }
                        Some(c) => token.push(c),
                    }
                }
                State::Escape => {
                    let Some(c) = c else {
                        return Err(ShlexError::NoEscapedCharacter);
                    };
                    // In POSIX shells only the quote itself or the escape character may be
                    // escaped within quotes; otherwise the backslash stays.
                    if let State::Quote(q) = escaped_state
                        && c != q
                        && c != ESCAPE
                    {
                        token.push(ESCAPE);
                    }
                    token.push(c);
                    *state = escaped_state;
                }
                State::Word => match c {
                    None => {
                        *state = State::Eof;
                        break;
                    }
                    Some(c) if WHITESPACE.contains(c) => {
                        *state = State::Whitespace;
                        if !token.is_empty() || (self.posix && quoted) {
                            break;
                        }
                    }
                    Some(c) if self.commenters.contains(c) => {
                        cursor.skip_line();
                        if self.posix {
                            *state = State::Whitespace;
                            if !token.is_empty() || quoted {
                                break;
                            }
                        }
                    }
                    Some(c) if self.posix && QUOTES.contains(c) => *state = State::Quote(c),
                    Some(c) if self.posix && c == ESCAPE => {
                        escaped_state = State::Word;
                        *state = State::Escape;
                    }
                    Some(c)
                        if self.is_wordchar(c) || QUOTES.contains(c) || self.whitespace_split =>
                    {
                        token.push(c);
                    }
                    Some(c) => {
                        cursor.pushback = Some(c);
                        *state = State::Whitespace;
                        if !token.is_empty() || (self.posix && quoted) {
                            break;
                        }
                    }
                },
            }
        }
        Ok((token, quoted))
    }
}

/// The input stream: CPython reads one character at a time with a one-character pushback.
#[derive(Debug)]
struct Cursor {
    chars: Vec<char>,
    pos: usize,
    pushback: Option<char>,
}

impl Cursor {
    fn next(&mut self) -> Option<char> {
        if let Some(c) = self.pushback.take() {
            return Some(c);
        }
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// `instream.readline()`: skips to just after the next newline.
    fn skip_line(&mut self) {
        while let Some(&c) = self.chars.get(self.pos) {
            self.pos += 1;
            if c == '\n' {
                break;
            }
        }
    }
}
