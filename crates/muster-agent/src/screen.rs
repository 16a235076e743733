//! The screen of a pty session, as a terminal showing its output would have it.
//!
//! A [`Screen`] is fed exactly the bytes of the session's stdout frames, in
//! `seq` order, at the moment each frame is numbered (the run's batcher owns
//! both), so what [`Screen::paint`] returns corresponds to one `next_seq`:
//! every frame below it, and none from it on.

/// A pty session's terminal state: its cells, attributes, cursor and modes.
pub(crate) struct Screen {
    parser: vt100::Parser,
}

impl Screen {
    /// A blank screen of `cols`×`rows`, without scrollback.
    pub(crate) fn new(cols: u16, rows: u16) -> Self {
        Self {
            parser: vt100::Parser::new(rows, cols, 0),
        }
    }

    /// Applies output the process wrote to the terminal.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.parser.process(bytes);
    }

    /// Changes the window size, as the pty's was.
    pub(crate) fn resize(&mut self, cols: u16, rows: u16) {
        self.parser.screen_mut().set_size(rows, cols);
    }

    /// The window size, as `(cols, rows)`.
    pub(crate) fn size(&self) -> (u16, u16) {
        let (rows, cols) = self.parser.screen().size();
        (cols, rows)
    }

    /// Terminal output that paints this screen on a blank terminal of its
    /// size: the alternate screen if the program is on it, a clear, the
    /// cells with their attributes, the input modes (keypad, cursor keys,
    /// bracketed paste, mouse), the cursor's position and visibility, and
    /// the attributes the program draws with next.
    pub(crate) fn paint(&self) -> String {
        let screen = self.parser.screen();
        let mut data = Vec::new();
        if screen.alternate_screen() {
            data.extend_from_slice(b"\x1b[?1049h");
        }
        data.extend(screen.contents_formatted());
        data.extend(screen.input_mode_formatted());
        data.extend(screen.cursor_state_formatted());
        data.extend(screen.attributes_formatted());
        // Cells hold `char`s and the rest is ASCII, so this never replaces anything.
        String::from_utf8_lossy(&data).into_owned()
    }
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (cols, rows) = self.size();
        f.debug_struct("Screen")
            .field("cols", &cols)
            .field("rows", &rows)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh terminal of the same size after playing `data`.
    fn replay(screen: &Screen) -> vt100::Parser {
        let (cols, rows) = screen.size();
        let mut parser = vt100::Parser::new(rows, cols, 0);
        parser.process(screen.paint().as_bytes());
        parser
    }

    #[test]
    fn a_painted_screen_shows_the_same_cells_and_cursor() {
        let mut screen = Screen::new(40, 10);
        screen.feed(b"\x1b[2J\x1b[3;5H\x1b[1mbold\x1b[0m \xc3\xa9t\xc3\xa9\x1b[7;1H");
        let replayed = replay(&screen);
        assert_eq!(
            replayed.screen().contents(),
            screen.parser.screen().contents()
        );
        assert_eq!(replayed.screen().cursor_position(), (6, 0));
        assert!(replayed.screen().cell(2, 4).unwrap().bold());
        assert_eq!(replayed.screen().cell(2, 9).unwrap().contents(), "é");
    }

    #[test]
    fn the_alternate_screen_and_a_resize_carry_over() {
        let mut screen = Screen::new(80, 24);
        screen.feed(b"main\x1b[?1049h\x1b[2J\x1b[?25l\x1b[1;1Hfull");
        screen.resize(100, 30);
        let replayed = replay(&screen);
        assert_eq!(replayed.screen().size(), (30, 100));
        assert!(replayed.screen().alternate_screen());
        assert!(replayed.screen().hide_cursor());
        assert!(replayed.screen().contents().starts_with("full"));
    }
}
