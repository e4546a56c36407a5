//! A 5x7 bitmap font (with two descender rows) for printable ASCII, held as constant data, so
//! that figures render the same on machines without any system font.

use std::sync::OnceLock;

use super::image::{Rgb, RgbImage};

/// Glyph width in font pixels.
pub const GLYPH_WIDTH: usize = 5;
/// Glyph height in font pixels: 7 above the baseline, 2 below.
pub const GLYPH_HEIGHT: usize = 9;
/// Horizontal distance between glyph origins (one column of spacing).
pub const ADVANCE: usize = 6;

/// The glyphs of ' ' to '~', sixteen per band: a line with each band's characters at every
/// sixth column, then nine rows of 5-pixel glyphs (`#` on, `.` off) separated by one space.
const SHEET: &str = r##"
      !     "     #     $     %     &     '     (     )     *     +     ,     -     .     /
..... ..#.. .#.#. .#.#. ..#.. ##... .##.. ..#.. ...#. .#... ..... ..... ..... ..... ..... .....
..... ..#.. .#.#. .#.#. .#### ##..# #..#. ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..... ..... ....#
..... ..#.. .#.#. ##### #.#.. ...#. #.#.. .#... .#... ...#. #.#.# ..#.. ..... ..... ..... ...#.
..... ..#.. ..... .#.#. .###. ..#.. .#... ..... .#... ...#. .###. ##### ..... ##### ..... ..#..
..... ..#.. ..... ##### ..#.# .#... #.#.# ..... .#... ...#. #.#.# ..#.. ..... ..... ..... .#...
..... ..... ..... .#.#. ####. #..## #..#. ..... ..#.. ..#.. ..#.. ..#.. .##.. ..... .##.. #....
..... ..#.. ..... .#.#. ..#.. ...## .##.# ..... ...#. .#... ..... ..... .##.. ..... .##.. .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..#.. ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .#... ..... ..... .....
0     1     2     3     4     5     6     7     8     9     :     ;     <     =     >     ?
.###. ..#.. .###. ##### ...#. ##### ..##. ##### .###. .###. ..... ..... ...#. ..... .#... .###.
#...# .##.. #...# ...#. ..##. #.... .#... ....# #...# #...# .##.. .##.. ..#.. ..... ..#.. #...#
#..## ..#.. ....# ..#.. .#.#. ####. #.... ...#. #...# #...# .##.. .##.. .#... ##### ...#. ....#
#.#.# ..#.. ...#. ...#. #..#. ....# ####. ..#.. .###. .#### ..... ..... #.... ..... ....# ...#.
##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....# .##.. .##.. .#... ##### ...#. ..#..
#...# ..#.. .#... #...# ...#. #...# #...# .#... #...# ...#. .##.. .##.. ..#.. ..... ..#.. .....
.###. .###. ##### .###. ...#. .###. .###. .#... .###. .##.. ..... ..#.. ...#. ..... .#... ..#..
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .#... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
@     A     B     C     D     E     F     G     H     I     J     K     L     M     N     O
.###. .###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...# #...# .###.
#...# #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.## #...# #...#
....# #...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.# ##..# #...#
.##.# ##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.# #.#.# #...#
#.#.# #...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...# #..## #...#
#.#.# #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...# #...# #...#
.###. #...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...# #...# .###.
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
P     Q     R     S     T     U     V     W     X     Y     Z     [     \     ]     ^     _
####. .###. ####. .#### ##### #...# #...# #...# #...# #...# ##### .###. ..... .###. ..#.. .....
#...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....# .#... #.... ...#. .#.#. .....
#...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#. .#... .#... ...#. #...# .....
####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#.. .#... ..#.. ...#. ..... .....
#.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#... .#... ...#. ...#. ..... .....
#.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #.... .#... ....# ...#. ..... .....
#.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. ##### .###. ..... .###. ..... .....
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... #####
..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....
`     a     b     c     d     e     f     g     h     i     j     k     l     m     n     o
.#... ..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. ..... ..... .....
..#.. ..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#.. ..... ..... .....
...#. .###. #.##. .###. .##.# .###. .#... .#### #.##. .##.. ..##. #..#. ..#.. ##.#. #.##. .###.
..... ....# ##..# #.... #..## #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.# ##..# #...#
..... .#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#.. #.#.# #...# #...#
..... #...# #...# #...# #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.# #...# #...#
..... .#### ####. .###. .#### .###. .#... .#### #...# .###. ...#. #..#. .###. #.#.# #...# .###.
..... ..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... ..... ..... ..... .....
..... ..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... ..... ..... ..... .....
p     q     r     s     t     u     v     w     x     y     z     {     |     }     ~
..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ...## ..#.. ##... .....
..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ..#.. ..#.. ..#.. .....
####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# ##### ..#.. ..#.. ..#.. .#...
#...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#. .#... ..#.. ...#. #.#.#
#...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#.. ..#.. ..#.. ..#.. ...#.
#...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#... ..#.. ..#.. ..#.. .....
####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### ##### ...## ..#.. ##... .....
#.... ....# ..... ..... ..... ..... ..... ..... ..... ....# ..... ..... ..#.. ..... .....
#.... ....# ..... ..... ..... ..... ..... ..... ..... .###. ..... ..... ..#.. ..... .....
"##;

/// One glyph: a row per entry, bit 4 the leftmost pixel.
type Glyph = [u8; GLYPH_HEIGHT];

/// Drawn for characters the font lacks: a hollow box.
const MISSING: Glyph = [0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111, 0, 0];

fn glyphs() -> &'static [Glyph; 95] {
    static GLYPHS: OnceLock<[Glyph; 95]> = OnceLock::new();
    GLYPHS.get_or_init(|| parse_sheet(SHEET))
}

fn parse_sheet(sheet: &str) -> [Glyph; 95] {
    let mut glyphs = [[0u8; GLYPH_HEIGHT]; 95];
    let mut seen = [false; 95];
    let lines: Vec<&str> = sheet.lines().filter(|l| !l.is_empty()).collect();
    for band in lines.chunks(GLYPH_HEIGHT + 1) {
        let header: Vec<char> = band[0].chars().collect();
        let count = band[1].len().div_ceil(ADVANCE);
        for g in 0..count {
            let ch = header.get(g * ADVANCE).copied().unwrap_or(' ');
            let index = (ch as usize).wrapping_sub(32);
            assert!(index < 95 && !seen[index], "font sheet: bad or repeated glyph {ch:?}");
            seen[index] = true;
            for (row, line) in band[1..].iter().enumerate() {
                let cells = &line.as_bytes()[g * ADVANCE..g * ADVANCE + GLYPH_WIDTH];
                glyphs[index][row] = cells.iter().fold(0, |acc, &c| (acc << 1) | (c == b'#') as u8);
            }
        }
    }
    assert!(seen.iter().all(|&s| s), "font sheet: missing glyphs");
    glyphs
}

fn glyph(ch: char) -> &'static Glyph {
    match ch {
        ' '..='~' => &glyphs()[ch as usize - 32],
        _ => &MISSING,
    }
}

/// Width in pixels of `text` drawn at `scale` (no trailing spacing).
pub fn text_width(text: &str, scale: usize) -> usize {
    let n = text.chars().count();
    if n == 0 { 0 } else { (n * ADVANCE - 1) * scale }
}

/// Height in pixels of one line at `scale`, descenders included.
pub fn text_height(scale: usize) -> usize {
    GLYPH_HEIGHT * scale
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale` x `scale`
/// square.
pub fn draw_text(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: usize, color: Rgb) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let gx = x + (i * ADVANCE) as i64 * s;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (1 << (GLYPH_WIDTH - 1 - col)) != 0 {
                    img.fill_rect(gx + col as i64 * s, y + row as i64 * s, s, s, color);
                }
            }
        }
    }
}

/// Draws `text` turned 90 degrees counter-clockwise (reading upwards), as a y-axis label; the
/// text occupies `[x, x + text_height) x [y - text_width, y)`.
pub fn draw_text_up(img: &mut RgbImage, x: i64, y: i64, text: &str, scale: usize, color: Rgb) {
    let s = scale as i64;
    for (i, ch) in text.chars().enumerate() {
        let gy = y - (i * ADVANCE) as i64 * s;
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..GLYPH_WIDTH {
                if bits & (1 << (GLYPH_WIDTH - 1 - col)) != 0 {
                    img.fill_rect(x + row as i64 * s, gy - (col as i64 + 1) * s, s, s, color);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheet_holds_every_printable_character() {
        let g = glyphs();
        assert_eq!(g[0], [0; GLYPH_HEIGHT], "space is blank");
        // Every other glyph has ink, and no two glyphs are the same.
        for i in 1..95 {
            assert!(g[i].iter().any(|&r| r != 0), "{:?} is blank", (i as u8 + 32) as char);
            for j in 0..i {
                assert_ne!(
                    g[i],
                    g[j],
                    "{:?} == {:?}",
                    (i as u8 + 32) as char,
                    (j as u8 + 32) as char
                );
            }
        }
        assert_eq!(
            *glyph('1'),
            [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0, 0]
        );
        assert_eq!(*glyph('\u{e9}'), MISSING);
    }

    #[test]
    fn text_is_drawn_where_measured() {
        let mut img = RgbImage::new(40, 20, Rgb::WHITE);
        draw_text(&mut img, 1, 1, "Hi", 2, Rgb::BLACK);
        assert_eq!(text_width("Hi", 2), 22);
        let inked: Vec<(usize, usize)> = (0..20)
            .flat_map(|y| (0..40).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get(x, y) == Rgb::BLACK)
            .collect();
        let max_x = inked.iter().map(|p| p.0).max().unwrap();
        let min_x = inked.iter().map(|p| p.0).min().unwrap();
        // 'H' starts at the origin; the last inked column is column 3 of 'i', at 1 + 12 + 3 * 2 + 1.
        assert_eq!((min_x, max_x), (1, 20));
    }
}
