"""The studio page in headless Chromium against the real app over HTTP, with the tiny model."""

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from handler.musicgen.generator import MusicgenGenerator
from handler.security.keys import key_digest
from handler.settings import Settings
from handler.storage import LocalStorage, S3Storage, Storage
from tests.support.browser import ARTIFACTS_DIR, AUDIO_LOADED, AUDIO_PLAYING, PHONE, WAVEFORM_INK, PageFactory
from tests.support.doubles import FailingGenerator, GatedGenerator
from tests.support.storage import fill
from tests.support.studio import PROMPT, StudioServer, serve_studio

API_KEY = "studio-test-key"
JOB_TIMEOUT_MS = 120_000
"""A generation on a busy machine: the tiny model's 1-2 s clips take a few seconds."""


def make_clip(page: Page, prompt: str = PROMPT, duration: int = 1, seed: int | None = None) -> None:
    """Fill the form as a user would, press Generate and wait until the clip is done."""
    page.get_by_label("Prompt", exact=True).fill(prompt)
    page.get_by_label("Duration (seconds)").fill(str(duration))
    if seed is not None:
        page.get_by_label("Seed").fill(str(seed))
    page.get_by_role("button", name="Generate").click()
    wait_for_the_job(page)


def wait_for_the_job(page: Page) -> None:
    """Wait until the page's job has ended, and check it made the clip."""
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^(Done|Not made)"), timeout=JOB_TIMEOUT_MS)
    # Enabled again once the clip is in the player too (or could not be).
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    error = page.locator("#error")
    assert error.is_hidden(), error.inner_text()
    expect(page.get_by_role("progressbar", name="Progress")).to_have_attribute("value", "100")


def clip_items(page: Page) -> list[str]:
    """The library's clips as shown, by prompt."""
    return page.locator("#library > li .clip-prompt").all_inner_texts()


def test_make_hear_download_and_delete_a_clip(studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(studio.page_url)
    expect(page.get_by_text("No clips yet: make one.")).to_be_visible()

    make_clip(page, duration=2, seed=11)
    expect(page.locator("#server-status")).to_contain_text("ready")
    expect(page.locator("#job-status")).to_have_text("Done.")
    page.wait_for_function(AUDIO_LOADED)
    assert abs(page.eval_on_selector("#audio", "audio => audio.duration") - 2.0) < 0.1
    assert page.evaluate(WAVEFORM_INK) > 0
    [filename] = studio.filenames()

    clip = page.get_by_role("listitem").filter(has_text=PROMPT)
    expect(clip).to_have_count(1)
    expect(clip).to_contain_text("2 s")
    expect(clip).to_contain_text("seed 11")
    expect(clip).to_have_attribute("aria-current", "true")

    clip.get_by_role("button", name="Play").click()
    page.wait_for_function(AUDIO_PLAYING)

    with page.expect_download() as download:
        clip.get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == filename
    assert Path(download.value.path()).read_bytes() == studio.file_bytes(f"/files/{filename}")

    with page.expect_download() as from_player:
        page.get_by_role("link", name="Download").click()
    assert Path(from_player.value.path()).read_bytes() == studio.file_bytes(f"/files/{filename}")

    clip.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete this clip?")
    expect(dialog).to_contain_text(filename)
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert studio.filenames() == [filename]

    clip.get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("listitem").filter(has_text=PROMPT)).to_have_count(0)
    expect(page.locator("#library-status")).to_contain_text("Deleted")
    expect(page.locator("#player")).to_be_hidden()
    assert studio.filenames() == []


def test_a_clip_of_the_library_plays_after_a_reload(local_studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(local_studio.page_url)
    make_clip(page, prompt="first clip")
    page.reload()
    expect(page.locator("#player")).to_be_hidden()
    page.get_by_role("listitem").filter(has_text="first clip").get_by_role("button", name="Play").click()
    page.wait_for_function(AUDIO_PLAYING)
    expect(page.locator("#player-title")).to_have_text("first clip")
    assert page.evaluate(WAVEFORM_INK) > 0


def test_use_these_settings_makes_the_clip_again(local_studio: StudioServer, pages: PageFactory) -> None:
    made = local_studio.api.post(
        "/generate/",
        json={
            "text": "drum and bass",
            "duration": 2,
            "guidance_scale": 2.5,
            "temperature": 0.7,
            "seed": 42,
            "format": "flac",
            "normalize": "peak",
        },
    )
    assert made.status_code == 200, made.text
    page = pages.open(local_studio.page_url)
    clip = page.get_by_role("listitem").filter(has_text="drum and bass")
    clip.get_by_role("button", name="Use these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("drum and bass")
    expect(page.get_by_label("Duration (seconds)")).to_have_value("2")
    expect(page.get_by_label("Guidance")).to_have_value("2.5")
    expect(page.get_by_label("Temperature")).to_have_value("0.7")
    expect(page.get_by_label("Seed")).to_have_value("42")
    expect(page.get_by_label("Format", exact=True)).to_have_value("flac")
    expect(page.get_by_label("Normalisation")).to_have_value("peak")

    page.get_by_role("button", name="Generate").click()
    expect(page.get_by_role("listitem").filter(has_text="drum and bass")).to_have_count(2, timeout=JOB_TIMEOUT_MS)
    again, first = local_studio.filenames()
    assert again != first
    assert again.endswith(".flac")
    assert local_studio.file_bytes(f"/files/{again}") == local_studio.file_bytes(f"/files/{first}")


def test_library_pages_with_limit_and_skip(local_studio: StudioServer, pages: PageFactory) -> None:
    names = fill(local_studio.storage, 23)
    page = pages.open(local_studio.page_url)
    newer = page.get_by_role("button", name="Newer")
    older = page.get_by_role("button", name="Older")
    expect(page.locator("#library > li")).to_have_count(10)
    assert clip_items(page) == names[::-1][:10]
    expect(newer).to_be_disabled()

    older.click()
    expect(page.locator("#page-label")).to_have_text("Page 2")
    assert clip_items(page) == names[::-1][10:20]
    older.click()
    expect(page.locator("#page-label")).to_have_text("Page 3")
    assert clip_items(page) == names[::-1][20:]
    expect(older).to_be_disabled()

    newer.click()
    expect(page.locator("#page-label")).to_have_text("Page 2")
    assert clip_items(page) == names[::-1][10:20]


def test_library_search_and_format_filter(local_studio: StudioServer, pages: PageFactory) -> None:
    names = fill(local_studio.storage, 3)
    prompts = ["Rainy Jazz piano", "techno at dawn", "jazz trio, brushes"]
    for name, prompt in zip(names, prompts, strict=True):
        local_studio.storage.save(name, b"RIFF", {"prompt": prompt})
    page = pages.open(local_studio.page_url)
    expect(page.locator("#library > li")).to_have_count(3)

    page.get_by_label("Search prompts").fill("JAZZ")
    expect(page.locator("#library > li")).to_have_count(2)
    assert clip_items(page) == ["jazz trio, brushes", "Rainy Jazz piano"]
    page.get_by_label("Formats shown").select_option("mp3")
    expect(page.get_by_text("No clip matches.")).to_be_visible()
    page.get_by_label("Formats shown").select_option("wav")
    page.get_by_label("Search prompts").fill("")
    expect(page.locator("#library > li")).to_have_count(3)


def test_deleting_the_last_clip_of_a_page_steps_back(local_studio: StudioServer, pages: PageFactory) -> None:
    names = fill(local_studio.storage, 11)
    page = pages.open(local_studio.page_url)
    page.get_by_role("button", name="Older").click()
    expect(page.locator("#page-label")).to_have_text("Page 2")
    page.get_by_role("listitem").filter(has_text=names[0]).get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#page-label")).to_have_text("Page 1")
    expect(page.locator("#library > li")).to_have_count(10)
    assert names[0] not in local_studio.filenames()


def test_a_delete_asked_again_before_the_last_dialogs_close_event_still_deletes(
    local_studio: StudioServer, pages: PageFactory
) -> None:
    # A dialog's close event is a queued task: dismissed and opened again within one task (as a
    # busy machine can run a quick Escape and Enter), the first close's event comes after the second
    # open, and once cleared the pending delete so that "Delete" deleted nothing.
    [name] = fill(local_studio.storage, 1)
    page = pages.open(local_studio.page_url)
    delete = page.get_by_role("listitem").filter(has_text=name).get_by_role("button", name="Delete")
    delete.evaluate("button => { button.click(); document.getElementById('delete-dialog').close(); button.click(); }")
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("#library-status")).to_have_text(re.compile("^Deleted"))
    assert name not in local_studio.filenames()


def test_errors_are_the_apis_words(local_studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(local_studio.page_url)
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.get_by_role("button", name="Generate").click()
    alert = page.get_by_role("alert").first
    expect(alert).to_contain_text("Invalid request: text:")
    expect(alert).not_to_contain_text("Traceback")
    expect(page.get_by_role("button", name="Generate")).to_be_enabled()
    assert local_studio.filenames() == []


def test_phone_width(local_studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(local_studio.page_url, viewport=PHONE, is_mobile=True, has_touch=True)
    make_clip(page, prompt="a phone-sized tune")
    page.wait_for_function(AUDIO_LOADED)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    clip = page.get_by_role("listitem").filter(has_text="a phone-sized tune")
    for name in ("Play", "Download", "Use these settings", "Delete"):
        button = clip.get_by_role("button", name=name)
        button.scroll_into_view_if_needed()
        box = button.bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= PHONE["width"]
        assert box["height"] >= 40
    clip.get_by_role("button", name="Play").tap()
    page.wait_for_function(AUDIO_PLAYING)


def test_keyboard_only(local_studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(local_studio.page_url)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to the library")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Prompt", exact=True)).to_be_focused()
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Duration (seconds)")).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type("1")
    page.get_by_label("Prompt", exact=True).focus()
    page.keyboard.press("Control+Enter")
    clip = page.get_by_role("listitem").filter(has_text="typed without a mouse")
    expect(clip).to_have_count(1, timeout=JOB_TIMEOUT_MS)

    clip.get_by_role("button", name="Delete").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Delete this clip?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(clip.get_by_role("button", name="Delete")).to_be_focused()

    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(dialog.get_by_role("button", name="Delete")).to_be_focused()
    page.keyboard.press("Enter")
    expect(clip).to_have_count(0)
    expect(page.get_by_role("heading", name="Library")).to_be_focused()


def test_readme_screenshot(local_studio: StudioServer, pages: PageFactory) -> None:
    """The studio as docs/studio.png shows it, saved to test-artifacts/studio/studio.png."""
    for prompt in ("Ambient electronic music with synth pads", PROMPT):
        made = local_studio.api.post("/generate/", json={"text": prompt, "duration": 2, "seed": 7})
        assert made.status_code == 200, made.text
    page = pages.open(local_studio.page_url, viewport={"width": 1100, "height": 820})
    page.get_by_role("listitem").filter(has_text=PROMPT).get_by_role("button", name="Play").click()
    page.wait_for_function(AUDIO_LOADED)
    page.get_by_label("Prompt", exact=True).fill("Upbeat funk with slap bass and brass stabs")
    waveform = page.get_by_role("img", name="Waveform of the clip")
    box = waveform.bounding_box()
    assert box is not None
    waveform.click(position={"x": box["width"] * 0.4, "y": box["height"] / 2})
    page.wait_for_function("() => document.getElementById('audio').currentTime > 0.5")
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS_DIR / "studio.png"
    page.screenshot(path=path)
    assert page.evaluate(WAVEFORM_INK) > 0
    assert path.stat().st_size > 0


def test_progress_and_eta_show_while_the_job_runs(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator, pages: PageFactory
) -> None:
    gated = GatedGenerator(generator)
    with serve_studio(settings, local_storage, gated) as server:
        page = pages.open(server.page_url)
        page.get_by_label("Prompt", exact=True).fill("held at the start")
        page.get_by_label("Duration (seconds)").fill("1")
        page.get_by_role("button", name="Generate").click()
        making = re.compile(r"^Making the clip: 0% · about \d+ (s|min \d+ s) left$")
        expect(page.locator("#job-status")).to_have_text(making)
        expect(page.get_by_role("button", name="Generate")).to_be_disabled()
        gated.gate.set()
        wait_for_the_job(page)
        expect(page.get_by_role("button", name="Generate")).to_be_enabled()


def test_a_failed_job_is_told_in_words(
    settings: Settings, local_storage: LocalStorage, generator: MusicgenGenerator, pages: PageFactory
) -> None:
    with serve_studio(settings, local_storage, FailingGenerator(generator)) as server:
        page = pages.open(server.page_url)
        page.get_by_label("Prompt", exact=True).fill("this one fails")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#job-status")).to_have_text("Not made.", timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#error")).to_have_text("Music generation failed")
        assert server.filenames() == []


def test_a_key_is_asked_for_once_and_kept(
    settings: Settings, deployed_storage: Storage, generator: MusicgenGenerator, pages: PageFactory
) -> None:
    keyed = settings.model_copy(update={"api_keys": key_digest(API_KEY)})
    with serve_studio(keyed, deployed_storage, generator, headers={"Authorization": f"Bearer {API_KEY}"}) as server:
        page = pages.open(server.page_url)
        refused: list[str] = []
        page.on("response", lambda response: refused.append(response.url) if response.status == 401 else None)
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#library-error")).to_have_text(re.compile("This API needs a key"))

        page.get_by_role("button", name="Refresh").click()
        expect(dialog).to_be_visible()
        dialog.get_by_label("API key").fill(API_KEY)
        dialog.get_by_role("button", name="Save key").click()
        expect(page.get_by_text("No clips yet: make one.")).to_be_visible()
        refused.clear()
        make_clip(page, prompt="made with a key")
        page.wait_for_function(AUDIO_LOADED)

        page.reload()
        clip = page.get_by_role("listitem").filter(has_text="made with a key")
        expect(clip).to_have_count(1)
        expect(dialog).to_be_hidden()
        [filename] = server.filenames()
        with page.expect_download() as download:
            clip.get_by_role("button", name="Download").click()
        assert Path(download.value.path()).read_bytes() == server.file_bytes(f"/files/{filename}")
        clip.get_by_role("button", name="Delete").click()
        page.get_by_role("dialog", name="Delete this clip?").get_by_role("button", name="Delete").click()
        expect(clip).to_have_count(0)
        assert server.filenames() == []
        assert refused == []

        page.evaluate("key => localStorage.setItem('srocks-music.api-key', key)", "not-the-key")
        page.reload()
        expect(dialog).to_contain_text("refused the key")
        dialog.get_by_role("button", name="Cancel").click()
        page.get_by_role("button", name="Forget the key").click()
        assert page.evaluate("() => localStorage.length") == 0


def test_the_policy_refuses_inline_code(local_studio: StudioServer, pages: PageFactory) -> None:
    page = pages.open(local_studio.page_url)
    expect(page.get_by_text("No clips yet: make one.")).to_be_visible()
    ran = page.evaluate(
        """() => {
          const script = document.createElement('script');
          script.textContent = 'window.injected = true';
          document.body.append(script);
          return window.injected === true;
        }"""
    )
    assert ran is False
    [watched] = pages.pages
    expect(page.locator("body")).to_be_visible()
    assert any("inline script" in message for message in watched.refused)
    watched.refused.clear()


def test_without_the_buckets_cors_rule_the_page_cannot_read_s3_downloads(
    settings: Settings, s3_storage: S3Storage, generator: MusicgenGenerator, pages: PageFactory
) -> None:
    """What template.yaml's CORS rule is for: without it the browser refuses the presigned download."""
    with serve_studio(settings, s3_storage, generator) as server:
        page = pages.open(server.page_url)
        page.get_by_label("Prompt", exact=True).fill("no CORS here")
        page.get_by_role("button", name="Generate").click()
        expect(page.locator("#error")).to_contain_text("Could not download the clip", timeout=JOB_TIMEOUT_MS)
        expect(page.locator("#job-status")).to_have_text("Done.")
        assert len(server.filenames()) == 1
