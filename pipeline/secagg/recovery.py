"""The server's part of unmasking a round's sum (server side: no key of any kind).

With each masked reply the server keeps the hospital's encrypted shares of its self-mask seed,
the seed's commitment and the reply's last ciphertext chunk (its key-check slot). After the round
it asks every survivor (:func:`unmask_requests`) for its shares of the other survivors' seeds and
its pair seeds with the hospitals that dropped out, and to check one other survivor's chunk for
the hospitals' key. From the answers, :func:`recover` rebuilds each survivor's self-mask seed
(``threshold`` shares, checked against its commitment) and gathers the dangling pair seeds: the
correction every key holder removes from the decrypted sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.flower import messages as M
from pipeline.secagg.masks import rebuild_seed, unmask_info


class RecoveryFailed(RuntimeError):
    """The round's masks cannot be removed (the reason names the hospital and why)."""


@dataclass
class RoundSecrets:
    """What the server kept from the round's masked replies, by hospital id."""

    shares: dict[int, dict[int, bytes]] = field(default_factory=dict)  # sender -> {recipient: encrypted share}
    commits: dict[int, str] = field(default_factory=dict)
    check_chunks: dict[int, bytes] = field(default_factory=dict)

    def keep(self, hospital: int, conf: dict, last_chunk: bytes) -> None:
        """Keep what a masked train reply carries beside its ciphertexts."""
        self.shares[hospital] = dict(zip(list(conf[M.SHARES_TO]), list(conf[M.SHARES]), strict=True))
        self.commits[hospital] = str(conf[M.SELF_COMMIT])
        self.check_chunks[hospital] = last_chunk


def unmask_requests(
    survivors: list[int], participants: list[int], secrets: RoundSecrets, key_slot: int
) -> dict[int, dict]:
    """The unmask message content for each survivor (by hospital id).

    Each survivor gets the shares addressed to it by the other survivors, the survivor and dropped
    lists, and the last chunk of the next survivor's reply to check (``key_slot``: the key-check
    slot's index inside that chunk).
    """
    survivors = sorted(survivors)
    dropped = [h for h in sorted(participants) if h not in survivors]
    requests = {}
    for i, me in enumerate(survivors):
        senders = [k for k in survivors if k != me]
        request = {
            M.SURVIVORS: survivors,
            M.DROPPED: dropped,
            M.SHARES_FROM: senders,
            M.SHARES: [secrets.shares[k][me] for k in senders],
        }
        if len(survivors) > 1:
            checked = survivors[(i + 1) % len(survivors)]
            request.update(
                {M.VERIFY_HOSPITAL: checked, M.VERIFY_CHUNK: secrets.check_chunks[checked], M.VERIFY_SLOT: key_slot}
            )
        requests[me] = request
    return requests


def recover(
    survivors: list[int],
    participants: list[int],
    answers: dict[int, dict],
    secrets: RoundSecrets,
    threshold: int,
    attempt: int = 0,
) -> dict:
    """The round's unmask information from the survivors' ``answers`` (unmask reply configs by hospital).

    Raises:
        RecoveryFailed: a checked reply is not under the hospitals' key, a survivor's seed cannot be
            rebuilt (too few or bad shares), or a survivor's pair seeds with a dropped hospital are missing.
    """
    survivors = sorted(survivors)
    dropped = [h for h in sorted(participants) if h not in survivors]
    for me, answer in sorted(answers.items()):
        if answer.get(M.VERDICT):
            checked = answer.get(M.VERIFY_HOSPITAL)
            raise RecoveryFailed(
                f"the reply of hospital {checked} fails the key check at hospital {me}: {answer[M.VERDICT]}"
            )
    shares: dict[int, list[bytes]] = {k: [] for k in survivors}
    dangling = []
    for me, answer in sorted(answers.items()):
        for of, share in zip(list(answer[M.SELF_SHARES_OF]), list(answer[M.SELF_SHARES]), strict=True):
            if int(of) in shares:
                shares[int(of)].append(bytes(share))
        for d, seed in zip(list(answer[M.PAIR_WITH]), list(answer[M.PAIR_SEEDS]), strict=True):
            dangling.append((me, int(d), bytes(seed)))
    seeds = {}
    for k in survivors:
        if len(shares[k]) < threshold:
            raise RecoveryFailed(
                f"hospital {k}'s self mask needs {threshold} share(s), {len(shares[k])} came back from the survivors"
            )
        try:
            seeds[k] = rebuild_seed(shares[k][:threshold], secrets.commits[k])
        except ValueError as err:
            raise RecoveryFailed(f"hospital {k}'s self mask: {err}") from None
    missing = [(k, d) for k in survivors for d in dropped if (k, d) not in {(a, b) for a, b, _ in dangling}]
    if missing:
        k, d = missing[0]
        raise RecoveryFailed(f"survivor {k} did not reveal its pair seed with hospital {d}, which dropped out")
    return unmask_info(survivors, seeds, dangling, attempt)
