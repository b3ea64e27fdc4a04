from aiplus.engines.reasoning import ThinkSplitter, split_reasoning


def feed_all(pieces):
    s = ThinkSplitter()
    reasoning, content = "", ""
    for p in pieces:
        r, c = s.feed(p)
        reasoning, content = reasoning + r, content + c
    r, c = s.flush()
    return reasoning + r, content + c


def test_whole_answer_split():
    assert split_reasoning("<think>\nstep 1\n</think>\n\nThe answer is 4.") == ("step 1", "The answer is 4.")


def test_implicit_open_tag_as_r1_templates_write_it():
    assert split_reasoning("step 1</think>answer") == ("step 1", "answer")


def test_no_closing_tag_is_all_reasoning():
    assert split_reasoning("<think>still thinking") == ("still thinking", "")


def test_tags_split_across_every_possible_chunk_boundary():
    text = "<think>a<b>c</think>answer </think> stays"
    for cut1 in range(len(text)):
        for cut2 in range(cut1, len(text)):
            pieces = [text[:cut1], text[cut1:cut2], text[cut2:]]
            assert feed_all(pieces) == ("a<b>c", "answer </think> stays"), pieces


def test_one_character_at_a_time():
    text = "<think>why</think>because"
    assert feed_all(list(text)) == ("why", "because")


def test_holds_back_only_a_possible_tag_prefix():
    s = ThinkSplitter()
    assert s.feed("<think>abc</th") == ("abc", "")
    assert s.feed("ink>x") == ("", "x")
