use super::*;
use crate::util::rng::keyed;
use proptest::prelude::*;

#[test]
fn generated_puzzles_are_unique_and_consistent() {
    for i in 0..20 {
        let (p, s) = Grid::random_puzzle(&mut keyed(5, "t", i, 0), &SudokuGen::default());
        assert!(s.is_valid_solution());
        let (n, sol) = p.count_solutions(10);
        assert_eq!(n, 1, "puzzle {i} not unique");
        assert_eq!(sol, Some(s));
        assert!(p.givens() >= 30 && p.givens() <= 40, "{}", p.givens());
        assert!((0..81).all(|k| p.cells()[k] == 0 || p.cells()[k] == s.cells()[k]));
    }
}

#[test]
fn uniqueness_counter_sees_multiple_solutions() {
    let empty = Grid::empty(Side::NINE);
    assert_eq!(empty.count_solutions(2).0, 2);
    // A "deadly pattern": cells (r1,c1)=a, (r1,c2)=b, (r2,c1)=b, (r2,c2)=a with r1, r2 in the
    // same band. The four cells lie in two boxes, so swapping a and b gives another valid
    // grid; with exactly those four cells empty, each row, column and box involved misses
    // just {a, b}, so the original and the swap are the only two solutions.
    let rectangle = |g: &Grid| -> Option<[usize; 4]> {
        for r1 in 0..9 {
            for r2 in (r1 + 1)..(r1 / 3 * 3 + 3) {
                for c1 in 0..9 {
                    for c2 in (c1 + 1)..9 {
                        let (a, b) = (g.cells()[r1 * 9 + c1], g.cells()[r1 * 9 + c2]);
                        if g.cells()[r2 * 9 + c1] == b && g.cells()[r2 * 9 + c2] == a {
                            return Some([r1 * 9 + c1, r1 * 9 + c2, r2 * 9 + c1, r2 * 9 + c2]);
                        }
                    }
                }
            }
        }
        None
    };
    let (s, cells) = (0..50)
        .map(|seed| Grid::random_solution(&mut keyed(1, "deadly", seed, 0), Side::NINE))
        .find_map(|g| rectangle(&g).map(|c| (g, c)))
        .expect("some random solution has a deadly pattern");
    let mut swapped = s;
    swapped.cells_mut().swap(cells[0], cells[1]);
    swapped.cells_mut().swap(cells[2], cells[3]);
    assert!(s.is_valid_solution() && swapped.is_valid_solution() && swapped != s);
    let mut p = s;
    for c in cells {
        p.cells_mut()[c] = 0;
    }
    assert_eq!(p.count_solutions(2).0, 2);
    assert_eq!(p.count_solutions(10).0, 2, "exactly two solutions");
    let first = p.count_solutions(1).1;
    assert!(first == Some(s) || first == Some(swapped), "{first:?}");
    // With one of the four cells given, the solution is unique again.
    p.cells_mut()[cells[0]] = s.cells()[cells[0]];
    assert_eq!(p.count_solutions(10), (1, Some(s)));
    // Conflicting givens: no solution.
    let mut bad = Grid::empty(Side::NINE);
    bad.cells_mut()[0] = 5;
    bad.cells_mut()[1] = 5;
    assert_eq!(bad.count_solutions(2).0, 0);
}

#[test]
fn grader_known_good_and_bad() {
    let (p, s) = Grid::random_puzzle(&mut keyed(9, "t", 0, 0), &SudokuGen::default());
    let ps = p.canonical();
    let good = format!("work\nanswer\n{}", s.canonical());
    assert!(accuracy(&good, &ps));
    assert!(perception_equivalent(&ps, &ps));
    // Break a cell.
    let mut bad = s;
    bad.cells_mut()[0] = if s.cells()[0] == 1 { 2 } else { 1 };
    assert!(!accuracy(&format!("answer\n{}", bad.canonical()), &ps));
    // A valid grid that ignores a given (relabel digits): valid but wrong for these givens.
    let mut relabeled = s;
    for d in relabeled.cells_mut() {
        *d = *d % 9 + 1;
    }
    assert!(relabeled.is_valid_solution());
    assert!(!accuracy(
        &format!("answer\n{}", relabeled.canonical()),
        &ps
    ));
    // Truncated answer.
    let trunc: String = good.chars().take(good.len() - 5).collect();
    assert!(!accuracy(&trunc, &ps));
    assert!(!accuracy("", &ps));
    assert!(!accuracy(&good, "not a grid"));
}

#[test]
fn traces_end_in_correct_answers() {
    for i in 0..10 {
        let (p, _) = Grid::random_puzzle(
            &mut keyed(2, "t", i, 0),
            &SudokuGen {
                givens: 26,
                ..SudokuGen::default()
            },
        );
        for v in 0..=4 {
            let t = trace(&p, v);
            assert!(accuracy(&t, &p.canonical()), "{t}");
        }
    }
}

#[test]
fn verbosity_four_restates_the_grid_after_every_placement() {
    let (p, s) = Grid::random_puzzle(&mut keyed(3, "t4", 1, 0), &four(4));
    let t = trace(&p, 4);
    let lines: Vec<&str> = t.lines().collect();
    let placements: Vec<usize> = (0..lines.len())
        .filter(|&k| lines[k].contains(" single"))
        .collect();
    assert_eq!(placements.len(), 16 - p.givens(), "{t}");
    // Each placement is followed by the grid it leaves: the previous grid with that cell set.
    let mut g = p;
    for &k in &placements {
        let (cell, rest) = lines[k].split_once('=').unwrap();
        let d: u8 = rest[..1].parse().unwrap();
        let (r, c) = cell[1..].split_once('c').unwrap();
        let (r, c): (usize, usize) = (r.parse().unwrap(), c.parse().unwrap());
        g.cells_mut()[(r - 1) * 4 + c - 1] = d;
        assert_eq!(lines[k + 1], "grid", "{t}");
        assert_eq!(lines[k + 2..k + 6].join("\n"), g.canonical(), "{t}");
    }
    assert_eq!(g, s);
    // Verbosity 3 is the same trace without those grids.
    let v3 = trace(&p, 3);
    assert!(t.len() > v3.len() + placements.len() * 20);
    assert!(t.starts_with(v3.lines().next().unwrap()));
}

#[test]
fn verbosity_four_restates_the_grid_after_guesses_and_undos() {
    // 9×9 puzzles with few givens that the solver has to guess on (and back out of).
    let (mut guesses, mut undos) = (0, 0);
    for i in 0..40 {
        let cfg = SudokuGen {
            givens: 20,
            ..SudokuGen::default()
        };
        let (p, _) = Grid::random_puzzle(&mut keyed(8, "guess", i, 0), &cfg);
        let t = trace(&p, 4);
        let lines: Vec<&str> = t.lines().collect();
        for (k, line) in lines.iter().enumerate() {
            let (undo, rest) = match line.split_once(' ') {
                Some(("guess", rest)) => (false, rest),
                Some(("undo", rest)) => (true, rest),
                _ => continue,
            };
            let (cell, d) = rest.split_once('=').unwrap();
            let (r, c) = cell[1..].split_once('c').unwrap();
            let at = (r.parse::<usize>().unwrap() - 1) * 9 + c.parse::<usize>().unwrap() - 1;
            assert_eq!(lines[k + 1], "grid", "{t}");
            let g = Grid::parse(&lines[k + 2..k + 11].join("\n")).unwrap();
            // A guess leaves its digit in the grid; an undo takes it out again.
            let want = if undo { 0 } else { d.parse::<u8>().unwrap() };
            assert_eq!(g.cells()[at], want, "{line}\n{t}");
            (guesses, undos) = (guesses + usize::from(!undo), undos + usize::from(undo));
        }
    }
    assert!(guesses > 0 && undos > 0, "{guesses} guesses, {undos} undos");
}

#[test]
fn canonical_round_trip() {
    let (p, _) = Grid::random_puzzle(&mut keyed(4, "t", 0, 0), &SudokuGen::default());
    assert_eq!(Grid::parse(&p.canonical()), Some(p));
    assert_eq!(p.canonical().lines().count(), 9);
}

fn four(givens: usize) -> SudokuGen {
    SudokuGen {
        givens,
        size: Side::FOUR,
    }
}

#[test]
fn four_by_four_puzzles_are_unique_and_solved_by_their_traces() {
    let mut givens = std::collections::BTreeSet::new();
    for i in 0..40 {
        let (p, s) = Grid::random_puzzle(&mut keyed(6, "t4", i, 0), &four(4));
        assert_eq!(p.side(), Side::FOUR);
        assert!(s.is_valid_solution(), "{}", s.canonical());
        assert_eq!(p.count_solutions(10), (1, Some(s)), "{}", p.canonical());
        assert!((0..16).all(|k| p.cells()[k] == 0 || p.cells()[k] == s.cells()[k]));
        assert!(p.cells().iter().all(|&d| d <= 4));
        givens.insert(p.givens());
        let text = p.canonical();
        assert_eq!(text.lines().count(), 4);
        assert!(text.lines().all(|l| l.len() == 4), "{text}");
        assert_eq!(Grid::parse(&text), Some(p));
        for v in 0..=4 {
            let t = trace(&p, v);
            assert!(accuracy(&t, &text), "{t}");
            assert!(
                !t.contains("r5") && !t.contains("c5") && !t.contains("box 5"),
                "{t}"
            );
        }
    }
    // Removal stops at the target (4, the fewest a unique 4×4 puzzle has) or where
    // uniqueness would be lost; most puzzles reach 4 or 5.
    assert!(givens.iter().all(|&g| (4..=8).contains(&g)), "{givens:?}");
    assert!(givens.contains(&4), "{givens:?}");
}

#[test]
fn sizes_are_read_from_the_text_and_never_mixed() {
    let (p4, s4) = Grid::random_puzzle(&mut keyed(7, "t4", 0, 0), &four(6));
    let (p9, s9) = Grid::random_puzzle(&mut keyed(7, "t9", 0, 0), &SudokuGen::default());
    assert!(accuracy(
        &format!("answer\n{}", s4.canonical()),
        &p4.canonical()
    ));
    // A 9×9 answer to a 4×4 puzzle (and the reverse) is wrong, however valid.
    assert!(!accuracy(
        &format!("answer\n{}", s9.canonical()),
        &p4.canonical()
    ));
    assert!(!accuracy(
        &format!("answer\n{}", s4.canonical()),
        &p9.canonical()
    ));
    assert!(!perception_equivalent(&p4.canonical(), &p9.canonical()));
    // Digits past the side are not cells of a 4×4 grid; other row counts are no grid.
    assert_eq!(Grid::parse("12.5\n....\n....\n...."), None);
    assert!(Grid::parse("12.4\n....\n....\n....").is_some());
    assert_eq!(Grid::parse("123\n...\n..."), None);
    assert_eq!(Grid::parse("1..\n....\n....\n...."), None);
}

#[test]
fn the_size_setting_is_checked_and_keeps_nine_by_nine_keys() {
    let parse = |s: &str| serde_json::from_str::<SudokuGen>(s);
    assert_eq!(parse(r#"{"givens": 6, "size": 4}"#).unwrap(), four(6));
    let err = parse(r#"{"givens": 6, "size": 5}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sudoku size 5"), "{err}");
    // At 9 the setting is not written, so configs (and their keys) read as before.
    assert_eq!(
        serde_json::to_string(&SudokuGen::default()).unwrap(),
        r#"{"givens":30}"#
    );
    assert_eq!(
        serde_json::to_string(&four(6)).unwrap(),
        r#"{"givens":6,"size":4}"#
    );
}

proptest! {
    #[test]
    fn grader_never_panics(r in ".{0,300}", p in ".{0,300}") {
        let _ = accuracy(&r, &p);
        let _ = perception_equivalent(&r, &p);
    }

    #[test]
    fn grader_never_panics_on_gridlike(rows in proptest::collection::vec("[0-9.x]{0,11}", 0..12)) {
        let text = rows.join("\n");
        let _ = accuracy(&format!("answer\n{text}"), &text);
    }
}
