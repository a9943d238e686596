"""A decoder logit mask from the note state: greedy decoding that cannot emit events the note decoder rejects.

Why: the decoder (`note_sequences.decode_note_event`, via `run_length_encoding.decode_events`) skips and counts as
invalid every event that makes no sense in context -- a note-off for a pitch that is not sounding, a `tie` outside a
segment's tie section, a pitch tied twice, a drum at velocity 0, an event earlier than the one before it, PAD/UNK or
an unused extra id. The bundled model emits 6-9 % such tokens on held-out audio (issue 27). Each one is a token the
model spent instead of a meaningful one; masking them makes greedy decoding pick the best token that *is* meaningful.

`NoteStateMask` is a pure-JAX state machine run inside the decoding loop: per batch row it follows the emitted tokens
(current program, velocity on/off, sounding pitches per program, tie section vs body, current time step) and gives
the ids allowed next. It only knows its own segment: segments are decoded in parallel, so what the previous segment
left sounding is unknown. Hence
- a tie-section pitch is checked only against the pitches already tied in this segment (whether it really sounded
  before is the stitcher's business);
- in the body, the sounding set is exact for ties models (the tie token ends every untied note): it is what the tie
  section declared plus this segment's onsets minus its offsets;
- without ties (ismir2021) notes may sound from an earlier segment, so a note-off is never forbidden there;
- the velocity and program carried from the previous segment are unknown until this segment sets them: an unknown
  velocity allows any pitch, and pitches started under the unknown program are tracked in a slot of their own (an
  offset under a known program may end them).
Every sequence the encoder produces is allowed token by token (tests check this on real pieces), and EOS always is.

Levels (`MODES`):
- 'invalid': forbids exactly what the decoder rejects whatever came before (the list above, within the segment);
- 'note_state' (issue 27's lever): 'invalid' plus the encoder's grammar where the decoder is lenient -- no onset of a
  pitch its program is already sounding (the decoder would silently end the old note: targets never contain it,
  their offsets come first) and, in a tie section, nothing but program, pitch and `tie` (a velocity, drum or shift
  there would make the model's next onsets read as tie declarations).
- 'invalid_skip': 'invalid', but where the model's own choice is a forbidden pitch, that step emits no pitch at all
  (see `apply`) instead of the next-best pitch.
Off ('none') in every preset: MT3's decoding is plain greedy.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mt3 import event_codec, vocabularies

MODES = ("none", "invalid", "invalid_skip", "note_state")
NUM_PITCHES = vocabularies.MAX_MIDI_PITCH + 1
NUM_PROGRAMS = vocabularies.MAX_MIDI_PROGRAM + 1
UNKNOWN_PROGRAM = NUM_PROGRAMS  # the slot of pitches started before this segment named a program
_EXPECTED_ORDER = ("shift", "pitch", "velocity", "tie", "program", "drum")


class MaskState(NamedTuple):
    """Per row (B): the decoder state the mask needs. A pytree, so it rides a `lax.while_loop` carry."""

    in_tie_B: jax.Array  # bool: still in the segment's tie section
    program_B: jax.Array  # int32: current program, UNKNOWN_PROGRAM until the segment names one
    velocity_B: jax.Array  # int32: -1 unknown (carried from the previous segment), 0 note-off, 1 onset
    sounding_BxQxP: jax.Array  # bool [B, 129, 128]: (program slot, pitch) sounding now / tied in the tie section
    step_B: jax.Array  # int32: time step (from the segment start) of the last non-shift event
    pending_B: jax.Array  # int32: steps of the shifts since that event (decoded as absolute), -1 if none


@dataclasses.dataclass(frozen=True)
class NoteStateMask:
    """The vocabulary layout the mask works on (hashable: a static argument of the jitted decoding chunk).

    Ids are vocabulary ids (codec index + 3; `mt3.vocabularies`): PAD, EOS, UNK, then the codec's ranges in MT3's
    order (shift, pitch, velocity, tie, program, drum), then extra ids and embedding padding up to `vocab_size`.
    """

    vocab_size: int
    num_classes: int
    max_shift: int
    num_velocities: int  # velocity values incl. 0 (bins + 1)
    include_ties: bool
    onsets_only: bool = False
    strict: bool = True  # 'note_state' (True) or 'invalid' (False)
    skip: bool = False  # 'invalid_skip': a forbidden pitch choice bars every pitch that step (`apply`)

    @classmethod
    def for_codec(cls, codec: event_codec.Codec, vocab_size: int, *, include_ties: bool, onsets_only: bool = False,
                  mode: str = "note_state") -> NoteStateMask:
        if mode not in MODES[1:]:
            raise ValueError(f"decode mask must be one of {MODES[1:]} here, got {mode!r}")
        types = tuple(er.type for er in codec.event_ranges)
        if types != _EXPECTED_ORDER:
            raise ValueError(f"the note-state mask needs MT3's codec layout {_EXPECTED_ORDER}, got {types}")
        if vocab_size < vocabularies.NUM_SPECIAL_TOKENS + codec.num_classes:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the codec's {codec.num_classes} classes + 3")
        lo, hi = codec.event_type_range("velocity")
        return cls(vocab_size=int(vocab_size), num_classes=codec.num_classes, max_shift=codec.max_shift_steps,
                   num_velocities=hi - lo + 1, include_ties=bool(include_ties), onsets_only=bool(onsets_only),
                   strict=mode == "note_state", skip=mode == "invalid_skip")

    # id layout (codec index offsets + NUM_SPECIAL_TOKENS)
    @property
    def _pitch_id(self) -> int:
        return vocabularies.NUM_SPECIAL_TOKENS + self.max_shift + 1

    @property
    def _velocity_id(self) -> int:
        return self._pitch_id + NUM_PITCHES

    @property
    def _tie_id(self) -> int:
        return self._velocity_id + self.num_velocities

    @property
    def _program_id(self) -> int:
        return self._tie_id + 1

    @property
    def _drum_id(self) -> int:
        return self._program_id + NUM_PROGRAMS

    def init(self, batch: int) -> MaskState:
        """The state at a segment's start (before its first token)."""
        return MaskState(in_tie_B=jnp.full((batch,), self.include_ties and not self.onsets_only, bool),
                         program_B=jnp.full((batch,), UNKNOWN_PROGRAM, jnp.int32),
                         velocity_B=jnp.full((batch,), -1, jnp.int32),
                         sounding_BxQxP=jnp.zeros((batch, NUM_PROGRAMS + 1, NUM_PITCHES), bool),
                         step_B=jnp.zeros((batch,), jnp.int32), pending_B=jnp.full((batch,), -1, jnp.int32))

    def allowed(self, state: MaskState) -> jax.Array:
        """bool [B, vocab_size]: the ids each row may emit next. EOS is always among them."""
        batch = state.in_tie_B.shape[0]
        in_tie, body, vel = state.in_tie_B, jnp.logical_not(state.in_tie_B), state.velocity_B
        # an event's time is the pending shift sum if a shift came since the last event, else the last event's step
        time_ok_B = (state.pending_B < 0) | (state.pending_B >= state.step_B)
        shift_vals = jnp.arange(self.max_shift + 1, dtype=jnp.int32)
        # a shift may not take the time back; a full-length chunk may (the encoder continues it with the rest)
        shift_ok = ((jnp.maximum(state.pending_B, 0)[:, None] + shift_vals >= state.step_B[:, None])
                    | (shift_vals == self.max_shift))
        rows = jnp.arange(batch)
        current_BxP = state.sounding_BxQxP[rows, state.program_B]
        unknown_BxP = state.sounding_BxQxP[:, UNKNOWN_PROGRAM]
        off_ok = current_BxP | unknown_BxP | (not self.include_ties)
        on_ok = jnp.logical_not(current_BxP) if self.strict else jnp.ones_like(current_BxP)
        body_pitch = jnp.where((vel == 0)[:, None], off_ok, jnp.where((vel > 0)[:, None], on_ok, True))
        pitch_ok = jnp.where(in_tie[:, None], jnp.logical_not(current_BxP), body_pitch)
        velocity_ok = program_ok = jnp.ones((batch,), bool)
        drum_ok = vel != 0
        if self.strict:
            shift_ok = shift_ok & body[:, None]
            velocity_ok, drum_ok = body, drum_ok & body
        if self.onsets_only:  # the onsets-only decoder accepts nothing but pitches
            pitch_ok = jnp.ones_like(pitch_ok)
            velocity_ok = program_ok = drum_ok = jnp.zeros((batch,), bool)
        pitch_ok, velocity_ok = pitch_ok & time_ok_B[:, None], velocity_ok & time_ok_B
        tie_ok, program_ok, drum_ok = in_tie & time_ok_B, program_ok & time_ok_B, drum_ok & time_ok_B

        def wide(ok_B, n):
            return jnp.broadcast_to(ok_B[:, None], (batch, n))

        special = jnp.broadcast_to(jnp.asarray([False, True, False]), (batch, 3))  # PAD, EOS, UNK
        rest = self.vocab_size - vocabularies.NUM_SPECIAL_TOKENS - self.num_classes  # extra ids, embedding padding
        return jnp.concatenate([special, shift_ok, pitch_ok, wide(velocity_ok, self.num_velocities),
                                tie_ok[:, None], wide(program_ok, NUM_PROGRAMS), wide(drum_ok, NUM_PITCHES),
                                jnp.zeros((batch, rest), bool)], axis=1)

    def apply(self, state: MaskState, logits_BxV: jax.Array) -> jax.Array:
        """The logits with every forbidden id at -inf: what the decoding loop calls before its argmax.

        With `skip`, a row whose own best id is a forbidden pitch (e.g. the end of a note that is not sounding) gets
        no pitch at all this step rather than the next-best pitch: a hard mask would turn a harmless skipped event
        into a real one (ending or starting some *other* note), which the held-out sets show costs F1."""
        allowed_BxV = self.allowed(state)
        if self.skip:
            best_B = jnp.argmax(logits_BxV, axis=-1)
            is_pitch = (best_B >= self._pitch_id) & (best_B < self._pitch_id + NUM_PITCHES)
            refused = is_pitch & jnp.logical_not(jnp.take_along_axis(allowed_BxV, best_B[:, None], axis=1)[:, 0])
            ids_V = jnp.arange(self.vocab_size)
            pitch_V = (ids_V >= self._pitch_id) & (ids_V < self._pitch_id + NUM_PITCHES)
            allowed_BxV = allowed_BxV & jnp.logical_not(refused[:, None] & pitch_V[None, :])
        return jnp.where(allowed_BxV, logits_BxV, -jnp.inf)

    def update(self, state: MaskState, ids_B: jax.Array) -> MaskState:
        """The state after each row emitted `ids_B` (EOS, PAD and ids outside the codec change nothing)."""
        ids_B = ids_B.astype(jnp.int32)
        index_B = ids_B - vocabularies.NUM_SPECIAL_TOKENS
        is_shift = (index_B >= 0) & (index_B <= self.max_shift)
        is_event = (index_B > self.max_shift) & (index_B < self.num_classes)
        pending = jnp.where(is_shift, jnp.maximum(state.pending_B, 0) + index_B,
                            jnp.where(is_event, -1, state.pending_B))
        step = jnp.where(is_event & (state.pending_B >= 0), state.pending_B, state.step_B)

        def in_range(first, n):
            return (ids_B >= first) & (ids_B < first + n), ids_B - first

        is_pitch, pitch_B = in_range(self._pitch_id, NUM_PITCHES)
        is_velocity, velocity_B = in_range(self._velocity_id, self.num_velocities)
        is_program, program_B = in_range(self._program_id, NUM_PROGRAMS)
        is_tie = ids_B == self._tie_id

        sounding = state.sounding_BxQxP
        if not self.onsets_only:
            rows = jnp.arange(ids_B.shape[0])
            hit_BxP = (jnp.arange(NUM_PITCHES)[None, :] == pitch_B[:, None]) & is_pitch[:, None]
            current_BxP = sounding[rows, state.program_B]
            off_B = jnp.logical_not(state.in_tie_B) & (state.velocity_B == 0)
            in_current_B = jnp.any(current_BxP & hit_BxP, axis=-1)
            # a tie declaration, an onset or a pitch at unknown velocity sounds; an offset ends the note of the
            # current program, else one started under the unknown program
            new_current = jnp.where(off_B[:, None], current_BxP & ~(hit_BxP & in_current_B[:, None]),
                                    current_BxP | hit_BxP)
            sounding = sounding.at[rows, state.program_B].set(new_current)
            unknown_BxP = sounding[:, UNKNOWN_PROGRAM]
            from_unknown_B = off_B & jnp.logical_not(in_current_B)
            sounding = sounding.at[:, UNKNOWN_PROGRAM].set(unknown_BxP & ~(hit_BxP & from_unknown_B[:, None]))
        return MaskState(in_tie_B=state.in_tie_B & jnp.logical_not(is_tie),
                         program_B=jnp.where(is_program, program_B, state.program_B),
                         velocity_B=jnp.where(is_velocity, (velocity_B > 0).astype(jnp.int32), state.velocity_B),
                         sounding_BxQxP=sounding, step_B=step, pending_B=pending)


@functools.partial(jax.jit, static_argnames=("mask",))
def allowed_along(mask: NoteStateMask, ids_BxT: jax.Array) -> jax.Array:
    """bool [B, T]: whether each id of a decoded (or encoded) segment was allowed where it stands, the mask run along
    the row from its first token. Ids after EOS read as allowed. For tests, and to count what a free decode would
    have had masked."""
    ids_TxB = jnp.asarray(ids_BxT, jnp.int32).T

    def step(carry, ids_B):
        state, done_B = carry
        allowed_BxV = mask.allowed(state)
        ok_B = jnp.take_along_axis(allowed_BxV, jnp.clip(ids_B, 0, mask.vocab_size - 1)[:, None], axis=1)[:, 0]
        ok_B = done_B | (ok_B & (ids_B >= 0) & (ids_B < mask.vocab_size))
        return (mask.update(state, ids_B), done_B | (ids_B == vocabularies.EOS_ID)), ok_B

    _, ok_TxB = jax.lax.scan(step, (mask.init(ids_TxB.shape[1]), jnp.zeros((ids_TxB.shape[1],), bool)), ids_TxB)
    return ok_TxB.T
