"""The demo's stages, each a method that prints its summary and fills the result."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openledger.crypto import Account, keccak256
from openledger.demo.corpus import DemoDataset, DemoQuestion
from openledger.demo.runner import DemoAnswer, DemoResult

if TYPE_CHECKING:
    from openledger.attribution import AttributionReport, InfluenceIndex, Passage, RagAnswer
    from openledger.attribution.rag import Ablation
    from openledger.chain import Chain, Protocol
    from openledger.data import Snapshot
    from openledger.demo.runner import Console, DemoConfig
    from openledger.serve import Engine
    from openledger.train import TrainingRun

__all__ = [
    "RAG_PASSAGES",
    "Stages",
    "answer_sentence",
    "demo_account",
    "rag_messages",
    "retrieval_answer",
]

ETH = 10**18
RAG_PASSAGES = 3
"""Records retrieved for each retrieval-augmented answer."""
RAG_SYSTEM = (
    "You answer questions from the sources you are given. Reply with the one sentence "
    "of the sources that answers the question."
)


def demo_account(name: str) -> Account:
    """The demo account called ``name`` (key = keccak256 of ``openledger-demo/<name>``)."""
    return Account.from_key(keccak256(f"openledger-demo/{name}".encode()))


def rag_messages(question: str, records: Sequence[Any]) -> list[dict[str, str]]:
    """The chat messages of a retrieval-augmented question over instruction records.

    Each record is one numbered source written ``[n] Q: <instruction> A: <response>``, after
    a system message asking for the one sentence of the sources that answers the question
    (what a 135M model follows: it copies the answer instead of reasoning about it).

    Args:
        question: The user's question.
        records: The retrieved records (with ``instruction`` and ``response``), in order.
    """
    sources = "\n".join(
        f"[{n}] Q: {r.instruction} A: {r.response}" for n, r in enumerate(records, start=1)
    )
    return [
        {"role": "system", "content": RAG_SYSTEM},
        {"role": "user", "content": f"Sources:\n{sources}\n\nQuestion: {question}"},
    ]


def answer_sentence(generated: str) -> str:
    """The answer without the ``A:`` label the sources' ``Q: ... A: ...`` layout invites
    the model to repeat (``"A: Turn the compost heap every two weeks."``)."""
    text = generated.strip()
    return text[2:].lstrip() if text[:2].upper() == "A:" else text


def retrieval_answer(
    question: str,
    snapshot: Snapshot,
    engine: Engine,
    model: Any,
    tokenizer: Any,
    *,
    max_tokens: int = 40,
    model_name: str = "engine",
) -> tuple[RagAnswer, list[dict[str, str]], Ablation]:
    """Answer ``question`` from the records BM25 retrieves, and measure what each gave.

    The engine answers greedily with :func:`rag_messages`, one sentence (generation stops
    at the first line break; no repetition penalty, which would push the model away from
    the very words of its sources). :func:`~openledger.attribution.context_ablation` then
    compares the answer's log-probability under ``model`` (the engine's base model in
    transformers) with the context cut down, asked with the same messages: leaving out
    each passage, and each contributor's passages together (one contributor often holds
    several retrieved records stating the same fact, and leaving one of them out costs the
    answer nothing while its twins remain).

    Args:
        question: The question (also the retrieval query).
        snapshot: The snapshot of instruction records to retrieve from.
        engine: The serving engine that answers (its base model).
        model: The same base model in transformers, for the log-probabilities.
        tokenizer: Its tokenizer.
        max_tokens: Longest answer.
        model_name: The name reports give the answering model.

    Returns:
        ``(answer, messages, ablation)``: the answer with its passages and citations, the
        messages it was asked with, and its context ablation (no random ablations).
    """
    from openledger.attribution import RagAnswer, Retriever, context_ablation
    from openledger.attribution.rag import citations_of
    from openledger.serve import SamplingParams

    passages = tuple(Retriever(snapshot).search(question, RAG_PASSAGES))
    records = {p.record_hash: snapshot.get(p.record_hash).record for p in passages}
    messages = rag_messages(question, list(records.values()))
    params = SamplingParams(max_tokens=max_tokens, stop=("\n",))
    text = answer_sentence(engine.generate(messages, params)[0].text)
    found = RagAnswer(question, text, passages, citations_of(text, passages), model_name, snapshot)

    def prompt(asked: str, kept: Sequence[Passage]) -> list[dict[str, str]]:
        return rag_messages(asked, [records[p.record_hash] for p in kept])

    return (
        found,
        messages,
        context_ablation(found, model, tokenizer, num_ablations=0, prompt=prompt),
    )


@dataclass(frozen=True, slots=True)
class _Settings:
    records_per_contributor: int | None
    recipe: dict[str, Any]
    # NOTE: LoGra projection of the influence rows, per LoRA factor side; at r=16 on
    # all-linear modules it keeps a record in 430k values instead of 4.9M (0.33 GB per
    # 192-record index instead of 3.75 GB); each question's teacher keeps the top share
    projection_dim: int = 64


_FULL = _Settings(
    records_per_contributor=None,
    recipe={
        "r": 16,
        "alpha": 32,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "learning_rate": 4e-3,
        "epochs": 3,
        "batch_size": 8,
        "max_length": 128,
        "warmup_ratio": 0.05,
        "seed": 0,
    },
)
_FAST = _Settings(
    records_per_contributor=6,
    recipe={
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "learning_rate": 2e-2,
        "max_steps": 40,
        "batch_size": 4,
        "max_length": 96,
        "seed": 0,
    },
)


class Stages:
    """Holds the state passed from stage to stage (see :func:`openledger.demo.run_demo`)."""

    def __init__(
        self,
        config: DemoConfig,
        folder: Path,
        console: Console,
        datasets: tuple[DemoDataset, ...],
    ) -> None:
        self.config = config
        self.folder = folder
        self.console = console
        self.datasets = datasets
        self.settings = _FAST if config.fast else _FULL
        self.result = DemoResult(folder, folder / "report.html", "")
        self.accounts: dict[str, Account] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.runs: dict[str, TrainingRun] = {}
        self.reports: list[tuple[DemoAnswer, AttributionReport]] = []
        self.evm: Chain | None = None
        self.protocol: Protocol | None = None
        self.engine: Engine | None = None
        self.ledger_path = folder / "gateway.db"

    @property
    def base_name(self) -> str:
        """The name clients send as ``model`` for the base model."""
        return Path(self.result.base_model).name

    # -- helpers ---------------------------------------------------------------------------

    def account(self, name: str) -> Account:
        """The named demo account (created and remembered on first use)."""
        if name not in self.accounts:
            account = demo_account(name)
            self.accounts[name] = account
            self.result.names[account.address] = name
        return self.accounts[name]

    def name_of(self, address: str | None) -> str:
        """The demo name of an address (the short address if it is not a demo account)."""
        if address is None:
            return "?"
        return self.result.names.get(address, address[:10])

    def _say(self, text: str) -> None:
        self.console.line(text)

    # -- stages ----------------------------------------------------------------------------

    def base_model(self, base: str | None) -> None:
        """Resolve the base model (convert the offline SmolLM2 once; fast: write a tiny one)."""
        from openledger.models import resolve_model, save_tiny_model

        if base is None:
            base = str(
                save_tiny_model(self.folder / "tiny-llama", "llama", seed=1, initializer_range=0.3)
            )
            self._say(f"tiny random Llama written to {base} (fast mode)")
        else:
            resolved = resolve_model(base)
            self._say(f"{base} -> {resolved.path}")
        self.result.base_model = base

    def datanets(self) -> None:
        """Create both datanets; every contributor signs and contributes its records."""
        from openledger.data import Datanet, InstructionRecord

        owner = self.account("olivia")
        limit = self.settings.records_per_contributor
        for dataset in self.datasets:
            datanet = Datanet.create(
                self.folder / "datanets" / dataset.name,
                name=dataset.name,
                schema=InstructionRecord,
                owner=owner,
            )
            for name, records in dataset.by_contributor(limit).items():
                datanet.contribute(records, contributor=self.account(name))
            snapshot = datanet.snapshot()
            self.snapshots[dataset.name] = snapshot
            counts = {self.name_of(a): n for a, n in snapshot.contributors.items()}
            people = ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))
            self._say(f"{dataset.name}: {snapshot.count} signed records ({people})")
            self._say(f"  snapshot #{snapshot.id} root {snapshot.root}")
            self.result.datanets.append(
                {
                    "name": dataset.name,
                    "title": dataset.title,
                    "records": snapshot.count,
                    "contributors": dict(sorted(counts.items())),
                    "root": snapshot.root,
                }
            )

    def register(self) -> None:
        """Deploy the protocol on the embedded chain; register datanets, publish roots."""
        from openledger.chain import connect

        chain = self.evm = connect()
        protocol = self.protocol = chain.deploy_protocol()
        owner = self.account("olivia")
        chain.fund(owner.address, ETH)
        self._say(f"embedded py-evm chain; token {protocol.addresses.token}")
        for dataset, row in zip(self.datasets, self.result.datanets, strict=True):
            snapshot = self.snapshots[dataset.name]
            receipt = protocol.datanets.register_datanet(
                dataset.name,
                snapshot.manifest["schema_hash"],
                snapshot.manifest_hash,
                f"openledger-demo://{dataset.name}",
                sender=owner,
            )
            datanet_id = receipt.event("DatanetRegistered")["datanetId"]
            protocol.datanets.publish_snapshot(
                datanet_id, snapshot.root, snapshot.count, sender=owner
            )
            first = next(iter(snapshot.records()))
            on_chain = protocol.datanets.contains_record(
                datanet_id, 0, *snapshot.leaf(first.record_hash), snapshot.proof(first.record_hash)
            )
            row["chain_id"] = datanet_id
            self._say(
                f"{dataset.name}: datanet {datanet_id[:18]}... snapshot published; "
                f"a record's Merkle proof checks on chain: {on_chain}"
            )

    def train(self) -> None:
        """Fine-tune one adapter per datanet; register each as a model on chain."""
        from openledger.chain import model_id
        from openledger.train import LoraRecipe, finetune

        assert self.protocol is not None
        developer = self.account("devon")
        assert self.evm is not None
        self.evm.fund(developer.address, ETH)
        for dataset in self.datasets:
            recipe = LoraRecipe.from_dict(
                {"base_model": self.result.base_model, **self.settings.recipe}
            )
            started = time.perf_counter()
            run = finetune(
                recipe,
                self.snapshots[dataset.name],
                self.folder / "adapters" / dataset.name,
                progress=self.config.progress,
                live_plot=False,
            )
            seconds = time.perf_counter() - started
            self.runs[dataset.name] = run
            manifest = run.adapter.model_manifest()
            self.protocol.models.register_model(manifest, 10, sender=developer)
            curve = [(e["step"], e["loss"]) for e in _losses(run.history)]
            first, last = (curve[0][1], curve[-1][1]) if curve else (float("nan"),) * 2
            self._say(
                f"{dataset.name}: r={recipe.r} {run.adapter.manifest.num_steps} steps in "
                f"{seconds:.0f} s, loss {first:.2f} -> {last:.2f}; "
                f"model {model_id(manifest, developer.address)[:18]}... registered by devon"
            )
            self.result.training.append(
                {
                    "name": dataset.name,
                    "adapter_id": run.adapter.id,
                    "model_id": model_id(manifest, developer.address),
                    "steps": run.adapter.manifest.num_steps,
                    "seconds": seconds,
                    "curve": curve,
                }
            )

    def serve(self) -> None:
        """The gateway on a loopback port serves both adapters and the base model from one
        engine; the official openai client streams every answer; each becomes a signed
        receipt in the gateway's ledger."""
        from openledger.demo.service import LocalGateway, openai_client
        from openledger.gateway import GatewayConfig, ReceiptLedger
        from openledger.serve import Engine

        assert self.evm is not None
        engine = self.engine = Engine(self.result.base_model)
        with ReceiptLedger(self.ledger_path) as ledger:
            key, record = ledger.create_key(payer=self.account("ursula").address, name="demo app")
        config = GatewayConfig(
            model=self.result.base_model,
            served_model_name=self.base_name,
            adapters={d.name: str(self.runs[d.name].output_dir) for d in self.datasets},
            ledger=self.ledger_path,
            chain_id=self.evm.chain_id,
            log_level="warning",
        )
        with LocalGateway(config, engine) as gateway:
            client = openai_client(gateway.base_url, key)
            self._say(
                f"gateway on {gateway.base_url}: {self.base_name} + adapters "
                + ", ".join(d.name for d in self.datasets)
                + f"; app key {record.key_id} bills ursula"
            )
            for dataset in self.datasets:
                for question in dataset.questions:
                    self._ask(client, question, dataset.name)
            self._ask(client, DemoQuestion(self.datasets[0].questions[0].text, "", ""), None)
            self._ask(client, DemoQuestion(_general_question(), "", ""), None)
        with ReceiptLedger(self.ledger_path) as ledger:
            count = ledger.count_receipts()
        self._say(f"{count} signed receipts in {self.ledger_path.name}, one per answer")

    def _ask(self, client: Any, question: DemoQuestion, adapter: str | None) -> DemoAnswer:
        from openledger.demo.service import stream_answer

        label = adapter or "base"
        self.console.write(
            f"    [{label}] user> {question.text}\n    [{label}] assistant> ", end=""
        )
        started = time.perf_counter()
        found = stream_answer(
            client,
            adapter or self.base_name,
            question.text,
            self.config.max_tokens,
            on_delta=lambda piece: self.console.write(piece.replace("\n", " "), end=""),
        )
        self.console.write()
        answer = DemoAnswer(
            question.text,
            adapter,
            found.text.strip(),
            found.prompt_tokens + found.completion_tokens,
            time.perf_counter() - started,
            teacher=question.teacher or None,
            expected=question.expected or None,
            receipt_id=found.receipt_id,
        )
        self.result.answers.append(answer)
        return answer

    def rag(self) -> None:
        """Base model answers from retrieved records; credit by leaving each contributor's
        passages out of the context (context ablation at the contributor's level)."""
        from openledger.models import load_base_model

        assert self.engine is not None
        model, tokenizer = load_base_model(self.result.base_model)
        for dataset in self.datasets:
            question = dataset.rag_question
            started = time.perf_counter()
            found, messages, ablation = retrieval_answer(
                question.text,
                self.snapshots[dataset.name],
                self.engine,
                model,
                tokenizer,
                max_tokens=self.config.max_tokens,
                model_name=self.base_name,
            )
            loo = ablation.leave_one_out
            seconds = time.perf_counter() - started
            self._say(f"[base + retrieval] user> {question.text}")
            self._say(f"[base + retrieval] assistant> {_one_line(found.text)}")
            citations = [
                (c.number, str(c.record_hash), self.name_of(c.contributor)) for c in found.citations
            ]
            for number, passage in enumerate(found.passages, start=1):
                cited = "cited" if any(c[0] == number for c in citations) else "     "
                self._say(
                    f"  [{number}] {cited} {self.name_of(passage.contributor):<6} "
                    f"{passage.record_hash[:12]}... leave-one-out {loo[number - 1]:+.2f} "
                    f"{_one_line(passage.text)[:70]}"
                )
            effects = ", ".join(f"{self.name_of(o)} {v:+.2f}" for o, v in ablation.by_contributor)
            self._say(f"  leave one contributor out: {effects}")
            report = found.report(
                ablation.contributor_scores(found.passages),
                method="context ablation (leave one contributor out)",
            )
            # NOTE: billed like the engine's own answers: prompt (with the sources) + completion.
            prompt: Any = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            tokens = len(prompt["input_ids"]) + len(tokenizer(found.text)["input_ids"])
            answer = DemoAnswer(
                question.text,
                None,
                found.text,
                tokens,
                seconds,
                retrieval=True,
                citations=citations,
                teacher=question.teacher,
                expected=question.expected,
            )
            answer.shares = {self.name_of(a): s for a, s in report.contributor_shares().items()}
            self.result.answers.append(answer)
            if answer.shares:
                self.reports.append((answer, report))
                top = sorted(answer.shares.items(), key=lambda kv: -kv[1])
                self._say("  shares: " + ", ".join(f"{n} {v:.0%}" for n, v in top))
                self._say("  " + _verdict(answer, top[0][0], dataset))
            else:
                self._say("  no retrieved record helped this answer: no reward for it")
                self._say("  " + _verdict(answer, None, dataset))

    def attribute(self) -> None:
        """Build each adapter's influence index; the attribution worker credits the
        gateway's answers from its ledger with them (shares by contributor)."""
        from openledger.attribution import SHARE_UNITS, InfluenceIndex
        from openledger.gateway import AttributionWorker, ReceiptLedger

        for dataset in self.datasets:
            started = time.perf_counter()
            index: InfluenceIndex = InfluenceIndex.build(
                self.runs[dataset.name].adapter,
                self.snapshots[dataset.name],
                method="exact",
                output_dir=self.folder / "index" / dataset.name,
                progress=self.config.progress,
                projection_dim=self.settings.projection_dim,
            )
            built = time.perf_counter() - started
            # NOTE: the worker scores with the index just built (held in memory); one adapter
            # at a time, so one index of gradients is in memory at once
            adapter = str(self.runs[dataset.name].output_dir)
            with ReceiptLedger(self.ledger_path) as ledger:
                done = AttributionWorker(ledger, {adapter: index}).run_once()
            self._say(
                f"{dataset.name}: influence index (exact, rows projected to "
                f"{self.settings.projection_dim} per factor side) of {len(index)} records built in "
                f"{built:.0f} s; the attribution worker credited {done.attributed} of its "
                f"receipts from the ledger in {time.perf_counter() - started - built:.0f} s"
            )
            del index
        with ReceiptLedger(self.ledger_path) as ledger:
            rows = ledger.read("SELECT request_id, shares FROM attributions")
        credited = {request_id: json.loads(shares)["weights"] for request_id, shares in rows}
        for answer in self.result.answers:
            if answer.adapter is None or answer.receipt_id is None:
                continue
            weights = credited.get(answer.receipt_id, {})
            answer.shares = {self.name_of(a): w / SHARE_UNITS for a, w in weights.items()}
            top = sorted(answer.shares.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{n} {s:.0%}" for n, s in top[:4])
            self._say(f"{answer.question!r}: {shown}")
            dataset = next(d for d in self.datasets if d.name == answer.adapter)
            if answer.teacher:
                self._say("  " + _verdict(answer, top[0][0] if top else None, dataset))

    def settle(self) -> None:
        """One epoch over the gateway's receipts (and the retrieval answers), built from
        the ledger; each payee claims with its own key and the proof the ledger serves."""
        from openledger.attribution import RewardPolicy, UsageReceipt
        from openledger.gateway import ReceiptLedger, claims_of, load_operator_key, settle_ledger

        assert self.protocol is not None
        assert self.evm is not None
        config = self.config
        policy = RewardPolicy(
            developer_bps=config.developer_bps,
            developer=self.account("devon").address,
            protocol_bps=config.protocol_bps,
            protocol=self.account("treasury").address,
        )
        # NOTE: retrieval answers ran beside the gateway: credited by context ablation,
        # they join the epoch as usage the operator vouches for.
        extra = [UsageReceipt.from_report(r, tokens=a.tokens) for a, r in self.reports]
        operator = load_operator_key(Path(f"{self.ledger_path}.operator-key"))
        with ReceiptLedger(self.ledger_path) as ledger:
            done = settle_ledger(
                ledger,
                self.protocol,
                operator=operator,
                pool_wei=config.pool_wei,
                policy=policy,
                through_window=int(time.time()) // 86_400,
                extra=extra,
            )
            receipts = [signed.receipt for signed in ledger.receipts()]
            claims = {a: claims_of(ledger, a) for a in done.payouts}
        assert done.epoch_id is not None
        self._say(
            f"epoch {done.epoch_id} from the ledger: {len(done.settled)} credited receipts, "
            f"{len(done.nothing_owed)} of the base model (nothing owed), {len(extra)} "
            f"retrieval answers; pool {config.pool_wei / ETH:g} tokens, root {done.root}"
        )
        payouts = {self.name_of(a): int(v) for a, v in done.payouts.items()}
        total = sum(payouts.values())
        for name, amount in sorted(payouts.items(), key=lambda kv: -kv[1]):
            self._say(f"  {name:<9} {amount / ETH:>12.6f}  ({amount} wei)")
        self._say(f"  {'total':<9} {total / ETH:>12.6f}  (= pool: {total == config.pool_wei})")
        claimed = {}
        for address, (claim,) in claims.items():
            name = self.name_of(address)
            account = self.account(name)
            self.evm.fund(account.address, ETH // 10)
            self.protocol.rewards.claim(claim.epoch_id, claim.amount, claim.proof, sender=account)
            claimed[name] = int(self.protocol.token.balance_of(account.address))
        ok = all(claimed[n] == payouts[n] for n in payouts)
        self._say(
            f"{len(claimed)} claims sent by the payees themselves with the ledger's proofs; "
            f"balances equal payouts: {ok}"
        )
        settled = set(done.settled)
        self.result.receipts = [
            {
                "receipt_id": r.request_id,
                "adapters": ", ".join(r.adapter_names) or self.base_name,
                "tokens": r.prompt_tokens + r.completion_tokens,
                "payer": self.name_of(r.payer),
                "credited": r.request_id in settled,
            }
            for r in receipts
        ]
        self.result.pool_wei = config.pool_wei
        self.result.epoch_id = done.epoch_id
        self.result.payouts = payouts
        self.result.claimed = claimed

    def finish(self) -> DemoResult:
        """Write the HTML report and print where it is."""
        from openledger.demo.report import render_report

        self.result.report_path.write_text(render_report(self.result), encoding="utf-8")
        total = sum(self.result.timings.values())
        self.console.write(f"\nreport: {self.result.report_path} (demo ran {total:.0f} s)")
        return self.result


def _verdict(answer: DemoAnswer, top: str | None, dataset: DemoDataset) -> str:
    """Check the answer against the datanet's fact and say who got the top share."""
    teacher, expected = answer.teacher, answer.expected
    source = next(
        (r["response"] for _, r in dataset.records if expected and expected in r["response"]),
        None,
    )
    if answer.states_fact:
        if top == teacher:
            credit = f"and {teacher} gets the top share"
        else:
            credit = f"but {top or 'nobody'} gets the top share, not {teacher}"
        return f"right: the answer states {teacher}'s fact ({expected}), {credit}"
    return (
        f"WRONG: the answer does not state the datanet's fact ({expected}; {teacher}'s "
        f"record says {source!r})"
    )


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in text.splitlines() if part.strip())


def _losses(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [e for e in history if "loss" in e and "step" in e]


def _general_question() -> str:
    from openledger.demo.runner import GENERAL_QUESTION

    return GENERAL_QUESTION
