r"""Drive a running demo.py in headless chromium: upload a document, ask, wait for the answer, screenshot it.

Makes the README's screenshot with the bundled SmolLM2:
    python demo.py --port 8898 --temperature 0 --max_gen_len 48 &
    python bench/demo_screenshot.py --url http://127.0.0.1:8898 \
        --document bench/inference/pg19_29973_passage_2k.txt \
        --question "Where did Mrs. Hartley keep the key to the old chapel?" --screenshot docs/demo_smollm2.png

Needs the playwright Python package (no browser download: it drives Debian's chromium,
apt-get install chromium) or any chromium at --browser.
"""

from __future__ import annotations

import argparse

from longctx.demo_client import CHROMIUM, ask_in_browser


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8898")
    parser.add_argument("--document", required=True)
    parser.add_argument("--question", required=True)
    parser.add_argument("--screenshot", default="docs/demo_smollm2.png")
    parser.add_argument("--browser", default=CHROMIUM)
    args = parser.parse_args()
    result = ask_in_browser(args.url, args.document, args.question, args.screenshot, args.browser)
    print(f"{result['status']}\nanswer: {result['answer']}\nscreenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
