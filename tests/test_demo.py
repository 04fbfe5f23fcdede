import socket

import pytest

from longctx.demo_client import ask_and_watch, message_text
from longctx.reading_model import ReadingModel
from tests.demo_server import running_demo
from tests.reading import expected_answer
from tests.scripts import run_script_expecting_error

pytest.importorskip("gradio_client")

MATERIAL = "The lighthouse keeper hid the brass key inside a blue teapot on the kitchen shelf."
QUESTION = "Where is the brass key?"


@pytest.fixture(scope="module")
def demo_url(tiny_model_dir):
    with running_demo(
        "--base_model", tiny_model_dir, "--context_size", "256", "--max_gen_len", "10", "--seed", "5"
    ) as url:
        yield url


def test_demo_answers_a_question_about_an_uploaded_document_and_keeps_the_conversation(
    demo_url, tiny_model_dir, tmp_path
):
    from gradio_client import Client, handle_file

    document = tmp_path / "keeper.txt"
    document.write_text(MATERIAL)
    client = Client(demo_url, verbose=False)
    status, chat = client.predict(handle_file(str(document)), api_name="/load_document")
    assert "keeper.txt" in status and "tokens; window 256 tokens" in status and chat == []
    chat, cleared = client.predict(QUESTION, [], api_name="/ask")
    assert cleared == ""
    assert [message["role"] for message in chat] == ["user", "assistant"]
    # the server's answer is the one the same prompt, settings and seed give by hand
    expected, _ = expected_answer(tiny_model_dir, MATERIAL, QUESTION, window=256, max_gen_len=10, seed=5)
    assert expected.strip() and message_text(chat[1]).strip() == expected.strip()  # the chatbot trims the edges
    chat, _ = client.predict("And the teapot?", chat, api_name="/ask")
    assert [message["role"] for message in chat] == ["user", "assistant"] * 2
    assert message_text(chat[2]) == "And the teapot?" and message_text(chat[3])


def test_demo_shows_errors_in_the_page_and_keeps_serving(demo_url, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    with pytest.raises(AppError, match="Upload a document first"):
        client.predict(QUESTION, [], api_name="/ask")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 broken")
    with pytest.raises(AppError, match="not a readable PDF") as error:
        client.predict(handle_file(str(tmp_path / "broken.pdf")), api_name="/load_document")
    assert "broken.pdf" in str(error.value) and "gradio" not in str(error.value)  # not the server's temp path
    (tmp_path / "long.txt").write_text(" ".join(f"Line {i} of the log." for i in range(400)))
    status, _ = client.predict(handle_file(str(tmp_path / "long.txt")), api_name="/load_document")
    assert "Too long" in status
    with pytest.raises(AppError, match="tokens .* over the 256-token window"):
        client.predict(QUESTION, [], api_name="/ask")
    (tmp_path / "short.txt").write_text(MATERIAL)
    client.predict(handle_file(str(tmp_path / "short.txt")), api_name="/load_document")
    chat, _ = client.predict(QUESTION, [], api_name="/ask")
    assert len(chat) == 2


def test_demo_refuses_a_port_in_use_with_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = run_script_expecting_error(capsys, "demo.py", "--port", str(port))
    assert f"--port {port} is in use" in line


DOCUMENTS = [
    f"The {colour} vault of the old bank was opened with the pass key {key}. Nobody else knew it."
    for colour, key in (("red", 4172), ("green", 9035), ("blue", 2268), ("grey", 7741))
]


def expected_conversation(model_dir, document: str, questions: list[str], window: int, max_gen_len: int) -> list[str]:
    """The greedy answers one conversation about `document` gets on its own, computed by hand."""
    from longctx.args import DemoArguments
    from longctx.chat import ChatSession
    from longctx.material import first_turn
    from longctx.reading_model import load_for_inference

    args = DemoArguments(base_model=str(model_dir), context_size=window, max_gen_len=max_gen_len, temperature=0)
    model, tokenizer = load_for_inference(ReadingModel(str(model_dir), context_size=window))
    session = ChatSession(model, tokenizer, window, args.chat_settings())
    turn, _ = first_turn(tokenizer, document, questions[0], window, args.prompt_layout())
    return [session.ask(turn), *(session.ask(question) for question in questions[1:])]


def test_concurrent_sessions_each_get_answers_about_their_own_document(tmp_path):
    """Four clients at once, each with its own upload and two questions: every answer is the one its
    conversation gets alone (no KV cache or material shared), and the queue reports positions."""
    import threading

    from gradio_client import Client, handle_file

    from tests.tiny_models import save_tiny_model

    questions = ["Which pass key opened the vault?", "And who else knew it?"]
    # untied: a tiny random model with tied embeddings echoes its last input token, the same "\n" for every document
    model_dir = save_tiny_model(tmp_path / "untied", seed=1, tie_word_embeddings=False)
    expected = [expected_conversation(model_dir, text, questions, 384, 24) for text in DOCUMENTS]
    assert len({answers[0] for answers in expected}) > 1  # the documents lead to different answers
    answers, positions, failures = [None] * len(DOCUMENTS), [], []
    barrier = threading.Barrier(len(DOCUMENTS))

    def client_session(index: int, url: str) -> None:
        try:
            client = Client(url, verbose=False)
            (tmp_path / f"doc{index}.txt").write_text(DOCUMENTS[index])
            client.predict(handle_file(str(tmp_path / f"doc{index}.txt")), api_name="/load_document")
            chat, replies = [], []
            for question in questions:
                barrier.wait(timeout=120)  # everyone asks at once
                chat, answer, waited = ask_and_watch(client, question, chat, poll_s=0.005)
                replies.append(answer)
                positions.extend(waited)
            answers[index] = replies
        except Exception as error:  # noqa: BLE001 - reported below, with the thread's index
            failures.append((index, repr(error)))
            barrier.abort()

    with running_demo(
        "--base_model", model_dir, "--context_size", "384", "--max_gen_len", "24", "--temperature", "0"
    ) as url:
        threads = [threading.Thread(target=client_session, args=(index, url)) for index in range(len(DOCUMENTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert not failures, failures
    assert answers == [[answer.strip() for answer in conversation] for conversation in expected]
    assert positions  # some requests waited, and were told where they stood
