"""Genetic-algorithm settings of the weight search: the presets and custom settings."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "GAPreset", "resolve_preset"]


@dataclass(frozen=True)
class GAPreset:
    """Genetic-algorithm settings of :func:`~lightning_pareto.pareto.search_weights`.

    Attributes:
        generations: Number of generations after the initial population (>= 1).
        population: Candidates per generation (>= 2).
        elites: Best candidates copied unchanged into the next generation (pygad ``keep_elitism``),
            ``0 <= elites <= population``.
        mutation_rate: Probability that a gene is mutated, in ``[0, 1]``.
        mutation_strength: Mutations add a uniform value in ``[-strength, strength]`` to a gene in
            [0, 1]; ``> 0``.

    Raises:
        ValueError: On a setting outside its range (the message names it).

    Example:
        >>> import dataclasses
        >>> dataclasses.replace(PRESETS["paper"], generations=5).generations
        5
    """

    generations: int
    population: int
    elites: int
    mutation_rate: float
    mutation_strength: float

    def __post_init__(self) -> None:
        if isinstance(self.generations, bool) or not (isinstance(self.generations, int) and self.generations >= 1):
            raise ValueError(f"`generations` must be an integer >= 1; got {self.generations!r}.")
        if isinstance(self.population, bool) or not (isinstance(self.population, int) and self.population >= 2):
            raise ValueError(f"`population` must be an integer >= 2; got {self.population!r}.")
        if isinstance(self.elites, bool) or not (isinstance(self.elites, int) and 0 <= self.elites <= self.population):
            raise ValueError(f"`elites` must be an integer in [0, population={self.population}]; got {self.elites!r}.")
        if not 0.0 <= self.mutation_rate <= 1.0:
            raise ValueError(f"`mutation_rate` must lie in [0, 1]; got {self.mutation_rate!r}.")
        if not self.mutation_strength > 0:
            raise ValueError(f"`mutation_strength` must be > 0 (genes live in [0, 1]); got {self.mutation_strength!r}.")


PRESETS: dict[str, GAPreset] = {
    # "What Is The Performance Ceiling of My Classifier?", Table 2: 20 iterations, population 24,
    # 6 elites, mutation rate and strength 0.25.
    "paper": GAPreset(generations=20, population=24, elites=6, mutation_rate=0.25, mutation_strength=0.25),
    # At most 6 + 3 * 4 = 18 distinct candidates, and fewer trials: candidates that repeat weights or
    # predict no target gain are not trained. With a trial of a quarter epoch that is a few epochs.
    "fast": GAPreset(generations=3, population=6, elites=2, mutation_rate=0.25, mutation_strength=0.25),
}


def resolve_preset(preset: str | GAPreset) -> GAPreset:
    """A preset's settings: ``preset`` itself, or the entry of :data:`PRESETS` it names.

    Raises:
        ValueError: On a name that is not in :data:`PRESETS`.
        TypeError: On anything else.
    """
    if isinstance(preset, GAPreset):
        return preset
    if not isinstance(preset, str):
        raise TypeError(f"`preset` must be a GAPreset or one of {sorted(PRESETS)}; got {type(preset).__name__}.")
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)} or a GAPreset; got {preset!r}.")
    return PRESETS[preset]
