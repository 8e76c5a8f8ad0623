"""Genetic-algorithm settings of the weight search: the presets and how overrides are checked."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "GAPreset", "resolve_preset"]


@dataclass(frozen=True)
class GAPreset:
    """Genetic-algorithm settings.

    Attributes:
        generations: Number of generations after the initial population.
        population: Candidates per generation.
        elites: Best candidates copied unchanged into the next generation (pygad ``keep_elitism``).
        mutation_rate: Probability that a gene is mutated.
        mutation_strength: Mutations add a uniform value in ``[-strength, strength]`` to a gene in [0, 1].
    """

    generations: int
    population: int
    elites: int
    mutation_rate: float
    mutation_strength: float


PRESETS: dict[str, GAPreset] = {
    # "What Is The Performance Ceiling of My Classifier?", Table 2: 20 iterations, population 24, 6 elites, mutation rate and strength 0.25.
    "paper": GAPreset(generations=20, population=24, elites=6, mutation_rate=0.25, mutation_strength=0.25),
    # At most 6 + 3 * 4 = 18 distinct candidates, and fewer trials: candidates that repeat weights or
    # predict no target gain are not trained. With a trial of a quarter epoch that is a few epochs.
    "fast": GAPreset(generations=3, population=6, elites=2, mutation_rate=0.25, mutation_strength=0.25),
}


def resolve_preset(
    preset: str,
    generations: int | None,
    population: int | None,
    elites: int | None,
    mutation_rate: float | None,
    mutation_strength: float | None,
) -> GAPreset:
    """The preset named ``preset`` with the given overrides applied (``None`` keeps the preset's value).

    Raises:
        ValueError: On an unknown preset or an override outside its range (the message names it).
    """
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}; got {preset!r}.")
    base = PRESETS[preset]
    settings = GAPreset(
        generations=base.generations if generations is None else generations,
        population=base.population if population is None else population,
        elites=base.elites if elites is None else elites,
        mutation_rate=base.mutation_rate if mutation_rate is None else mutation_rate,
        mutation_strength=base.mutation_strength if mutation_strength is None else mutation_strength,
    )
    if not (isinstance(settings.generations, int) and settings.generations >= 1):
        raise ValueError(f"`generations` must be an integer >= 1; got {settings.generations!r}.")
    if not (isinstance(settings.population, int) and settings.population >= 2):
        raise ValueError(f"`population` must be an integer >= 2; got {settings.population!r}.")
    if not (isinstance(settings.elites, int) and 0 <= settings.elites <= settings.population):
        raise ValueError(
            f"`elites` must be an integer in [0, population={settings.population}]; got {settings.elites!r}."
        )
    if not 0.0 <= settings.mutation_rate <= 1.0:
        raise ValueError(f"`mutation_rate` must lie in [0, 1]; got {settings.mutation_rate!r}.")
    if not settings.mutation_strength > 0:
        raise ValueError(f"`mutation_strength` must be > 0 (genes live in [0, 1]); got {settings.mutation_strength!r}.")
    return settings
