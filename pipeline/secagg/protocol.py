"""A hospital's part of the secure-aggregation protocol (Bonawitz et al. 2017, adapted to CKKS).

Per run (with the size query): make an ECDH agreement key, sign its public half with the
hospital's signing key. Per round (with each train message): check the relayed agreement keys of
every participant against the trusted roster, derive the pairwise keys, mask the packed update
(a fresh self-mask seed and one pair seed per other participant, bound to the study, round and
attempt), and Shamir-share the self-mask seed among the participants (threshold ``t`` =
``min_hospitals``; each other's share encrypted for its recipient, its own kept in its state).
When asked to unmask (after the server added the round's replies):

* refuse unless this hospital is among the survivors, the survivors number at least
  ``min_hospitals`` and are participants, and it has not answered this round and attempt for
  another survivor set (a second answer with another set is how a server would get both halves);
* reveal its shares of the survivors' self-mask seeds (its own included) and its pair seeds with
  the hospitals that dropped out, and nothing else: for any other hospital it reveals one of the
  two, never both.

What this hospital keeps for the protocol lives in its state file (``HospitalState.secagg``).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.secagg import agreement, masks
from pipeline.secagg.masks import Masking
from pipeline.secagg.params import SIGNING_DIR


class ProtocolRefused(ValueError):
    """This hospital will not take the step: the message breaks a rule of the protocol (the reason says which)."""


@dataclass
class RoundMasks:
    """What a hospital sends with its masked reply: the masking, the encrypted shares, the seed's commitment."""

    masking: Masking
    shares: dict[int, bytes]
    commitment: str


@dataclass
class HospitalProtocol:
    """One hospital's secure-aggregation state and steps for one study.

    Args:
        me: the hospital's id.
        study: the study id (binds signatures and seeds to it).
        signing_key: path of the hospital's signing key (PEM or OpenSSH).
        roster: path of the trusted roster of signing public keys.
        min_hospitals: the smallest survivor set it unmasks for (``federation.min_hospitals``).
        threshold: Shamir threshold of its self-mask seed.
        saved: the JSON kept in the hospital's state (empty for a new study).
    """

    me: int
    study: str
    signing_key: Path
    roster: Path
    min_hospitals: int
    threshold: int
    saved: str = ""
    state: dict = field(init=False)

    def __post_init__(self) -> None:
        self.state = json.loads(self.saved) if self.saved else {}

    def dumps(self) -> str:
        """The JSON to keep in the hospital's state file."""
        return json.dumps(self.state, sort_keys=True)

    # --- per run -------------------------------------------------------------------------------
    def advert(self) -> tuple[bytes, bytes]:
        """This run's agreement public key (made on first use, kept for the study) and its signature."""
        if "agreement_key" not in self.state:
            private, public = agreement.new_agreement_key()
            self.state["agreement_key"] = private.decode()
            self.state["agreement_public"] = public.decode()
        public = self.state["agreement_public"].encode()
        signing = agreement.load_signing_key(self.signing_key)
        return public, agreement.sign_advert(signing, self.study, self.me, public)

    def pairwise_keys(self, adverts: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Check every relayed agreement key against the roster; the key shared with each other participant.

        Raises:
            ProtocolRefused: this hospital is not a participant, a key is unsigned or for another key.
        """
        if self.me not in adverts:
            raise ProtocolRefused(f"hospital {self.me} is not among the participants the server lists")
        mine = adverts[self.me][0]
        if mine.decode() != self.state.get("agreement_public"):
            raise ProtocolRefused(f"the server relays another agreement key for hospital {self.me} than its own")
        problem = agreement.advert_problem(agreement.load_roster(self.roster), self.study, adverts)
        if problem:
            raise ProtocolRefused(problem)
        return agreement.shared_keys(self.state["agreement_key"].encode(), self.me, adverts)

    # --- per round -----------------------------------------------------------------------------
    def round_masks(self, rnd: int, attempt: int, keys: dict[int, bytes]) -> RoundMasks:
        """A fresh self mask and the pair masks of round ``rnd`` (attempt ``attempt``), with the seed's shares."""
        tag = _round_tag(rnd, attempt)
        self_seed = os.urandom(masks.SEED_BYTES)
        pair = {other: masks.pair_seed(key, self.study, tag, self.me, other) for other, key in keys.items()}
        shares, own = agreement.share_seed(self_seed, self.threshold, self.me, tag, keys)
        # only the latest attempt's own share is kept: an older round is never unmasked again
        self.state["own_share"] = {tag: base64.b64encode(own).decode()}
        return RoundMasks(Masking(self.me, self_seed, pair), shares, masks.commitment(self_seed))

    def unmask(
        self,
        rnd: int,
        attempt: int,
        survivors: list[int],
        dropped: list[int],
        shares_from: dict[int, bytes],
        keys: dict[int, bytes],
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """This hospital's shares of the survivors' self-mask seeds and its pair seeds with the dropped.

        The answer is recorded before it is given; the same question again gets the same answer.

        Raises:
            ProtocolRefused: a rule above is broken (the reason names it).
        """
        survivors, dropped = sorted(set(survivors)), sorted(set(dropped))
        tag = _round_tag(rnd, attempt)
        if self.me not in survivors:
            raise ProtocolRefused(f"hospital {self.me} is not among the survivors {survivors} it is asked to unmask")
        if len(survivors) < self.min_hospitals:
            raise ProtocolRefused(
                f"{len(survivors)} survivor(s) {survivors}, fewer than federation.min_hospitals={self.min_hospitals}"
            )
        participants = set(keys) | {self.me}
        if set(survivors) | set(dropped) != participants or set(survivors) & set(dropped):
            raise ProtocolRefused(f"survivors {survivors} and dropped {dropped} are not the participants")
        answered = self.state.setdefault("unmasked", {})
        if tag in answered and answered[tag] != survivors:
            raise ProtocolRefused(
                f"already unmasked round {rnd} (attempt {attempt}) for survivors {answered[tag]}; "
                f"refusing another set {survivors}"
            )
        answered[tag] = survivors
        if set(shares_from) - set(survivors):
            raise ProtocolRefused(
                f"shares of hospitals {sorted(set(shares_from) - set(survivors))} that did not survive"
            )
        self_shares = {
            frm: agreement.open_share(token, keys[frm], tag, frm, self.me) for frm, token in shares_from.items()
        }
        own = self.state.get("own_share", {}).get(tag)
        if own is not None:
            self_shares[self.me] = base64.b64decode(own)
        pair = {d: masks.pair_seed(keys[d], self.study, tag, self.me, d) for d in dropped}
        return self_shares, pair


def _round_tag(rnd: int, attempt: int) -> str:
    return f"{int(rnd)}.{int(attempt)}"


def fresh_parties(folder: str | Path, num_hospitals: int, study: str, min_hospitals: int) -> list[HospitalProtocol]:
    """The protocol states of ``num_hospitals`` hospitals with fresh signing keys and roster written
    under ``folder`` (as a simulation's key step writes them), for running the protocol in one
    process: benchmarks, the collusion attack, tests."""
    folder = Path(folder)
    roster = agreement.write_signing_keys(folder, num_hospitals)
    return [
        HospitalProtocol(
            h, study, agreement.signing_key_file(folder / SIGNING_DIR, h), roster, min_hospitals, min_hospitals
        )
        for h in range(num_hospitals)
    ]
