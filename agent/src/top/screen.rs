//! The interactive screen of `ptwatch top`: raw mode and the alternate
//! screen while it runs, restored on every way out (q, Ctrl-C in raw mode,
//! SIGTERM/SIGINT/SIGHUP, --iterations, an error, a panic).

use std::{
    io::{Stdout, Write as _},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use crossterm::{
    cursor,
    event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    execute, queue,
    terminal::{self, ClearType},
};

use super::{output::screen_lines, rows, sample::Sampler, stopped, ViewState};
use crate::cli::{TopArgs, TopSort};

/// How often keys and signals are looked at between refreshes.
const KEY_POLL: Duration = Duration::from_millis(100);

/// Raw mode and the alternate screen, undone on drop.
struct Terminal {
    stdout: Stdout,
}

impl Terminal {
    fn enter() -> anyhow::Result<Self> {
        terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
        // From here on, a panic must not leave the terminal raw.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let mut stdout = std::io::stdout();
        execute!(stdout, terminal::EnterAlternateScreen, cursor::Hide).context("setting up the screen")?;
        Ok(Self { stdout })
    }

    fn draw(&mut self, lines: &[String]) -> anyhow::Result<()> {
        let (width, height) = terminal::size().unwrap_or((80, 24));
        queue!(self.stdout, cursor::MoveTo(0, 0), terminal::Clear(ClearType::All))?;
        for (i, line) in lines.iter().take(usize::from(height)).enumerate() {
            let clipped: String = line.chars().take(usize::from(width)).collect();
            // Raw mode: no automatic carriage return.
            if i > 0 {
                write!(self.stdout, "\r\n")?;
            }
            write!(self.stdout, "{clipped}")?;
        }
        self.stdout.flush()?;
        Ok(())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Leave the alternate screen, show the cursor, leave raw mode. Safe to
/// call twice.
fn restore() {
    let mut stdout = std::io::stdout();
    let _ = execute!(stdout, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

/// What a key asks for.
enum Action {
    Quit,
    Redraw,
    Nothing,
}

fn on_key(code: KeyCode, modifiers: KeyModifiers, state: &mut ViewState) -> Action {
    match code {
        KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('p') => {
            state.sort = TopSort::Pagetable;
            Action::Redraw
        }
        KeyCode::Char('r') => {
            state.sort = TopSort::Reclaim;
            Action::Redraw
        }
        KeyCode::Char('d') => {
            state.sort = TopSort::Dontneed;
            Action::Redraw
        }
        KeyCode::Char('c') => {
            state.cgroups = !state.cgroups;
            Action::Redraw
        }
        _ => Action::Nothing,
    }
}

pub fn run(sampler: &mut Sampler, args: &TopArgs, mut state: ViewState, mode: &str) -> anyhow::Result<()> {
    let mut screen = Terminal::enter()?;
    tracing::debug!(mode, "top: interactive screen");
    let mut sample = sampler.sample()?;
    let mut refreshes = 0u64;
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            if refreshes > 0 {
                sample = sampler.sample()?;
            }
            refreshes += 1;
            redraw(&mut screen, sampler, &sample, state, args)?;
            if args.iterations.is_some_and(|n| refreshes >= n) {
                return Ok(());
            }
            next = Instant::now() + args.interval;
        }
        if stopped() {
            return Ok(());
        }
        let wait = next.saturating_duration_since(Instant::now()).min(KEY_POLL);
        if !event::poll(wait).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(key) if key.kind != KeyEventKind::Release => match on_key(key.code, key.modifiers, &mut state) {
                Action::Quit => return Ok(()),
                Action::Redraw => redraw(&mut screen, sampler, &sample, state, args)?,
                Action::Nothing => {}
            },
            Event::Resize(..) => redraw(&mut screen, sampler, &sample, state, args)?,
            _ => {}
        }
    }
}

fn redraw(
    screen: &mut Terminal,
    sampler: &mut Sampler,
    sample: &super::Sample,
    state: ViewState,
    args: &TopArgs,
) -> anyhow::Result<()> {
    let (_, height) = terminal::size().unwrap_or((80, 24));
    // Title, node line, blank line, column headers: 4 lines.
    let fit = u64::from(height).saturating_sub(4).max(1);
    let limit = args.limit.map_or(fit, |l| l.min(fit));
    let rows = rows(sampler, sample, state);
    let lines = screen_lines(sample, state, &rows, limit, args.interval);
    screen.draw(&lines)
}
