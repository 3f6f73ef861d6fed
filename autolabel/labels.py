"""`autolabel labels`: label events as a table or JSON lines."""

from __future__ import annotations

import click

from services.events import ProductLabeled, TaskLabel
from services.endpoints import require_kafka
from services.settings import load_settings
from services.topics import read_labels


# what became of each task's label: accepted (no person needed), waiting for a person, or published as advisory only
MARKS = {"accepted": "ok", "review": "review", "advisory": "advisory"}
LEGEND = "each label: ok = accepted, review = waits for a person, advisory = under its threshold, not queued (AUTOLABEL_REVIEW_POLICY)"


def label_cell(lab: TaskLabel) -> str:
    return f"{lab.label} {lab.confidence:.2f} {MARKS[lab.status]}"


def format_row(e: ProductLabeled) -> str:
    cells = [f"{e.product_id:<14}"]
    for task in ("style", "gender", "season"):
        cells.append(f"{label_cell(e.labels[task]):<27}")
    review = "yes" if e.needs_review else "no"
    if e.scope is not None and not e.scope.in_scope:  # every label flagged for that, or judged by the other categories' heads
        review += f" (out of scope, P {e.scope.probability:.2f}{': other heads' if e.scope.other_heads else ''})"
    if e.audit:  # sampled for a blind audit: queued for a person although no label needs review
        review += " (audit)"
    cells.append(review)
    return " ".join(cells)


HEADER = f"{'product_id':<14} {'style':<27} {'gender':<27} {'season':<27} needs_review"


@click.command("labels")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new label events.")
@click.option("--product-id", default=None, help="Only this product.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--review", is_flag=True, help="Read the review topic (low-confidence labels) instead.")
def labels_command(follow: bool, product_id: str | None, as_json: bool, review: bool) -> None:
    """Show every label event, in topic order (a product labeled twice shows twice)."""
    settings = load_settings()
    require_kafka(settings)
    topic = settings.topic_review if review else settings.topic_labels
    if not as_json:
        click.echo(HEADER)
    count = 0
    for event in read_labels(settings, follow=follow, product_id=product_id, topic=topic):
        count += 1
        click.echo(event.model_dump_json() if as_json else format_row(event))
    if not as_json and not follow:
        click.echo(f"({count} label event(s); {LEGEND})", err=True)
