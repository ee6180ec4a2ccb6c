"""The names the issues promise, importable from the package top level."""

import so3krates


def test_public_api_names():
    for name in ["ModelConfig", "init_model", "save_model", "load_model", "SO3kratesCalculator", "Potential", "System"]:
        assert hasattr(so3krates, name), name


def test_init_model_save_load_and_calculator_from_a_directory(tmp_path):
    from ase.build import molecule

    from so3krates import ModelConfig, SO3kratesCalculator, init_model, load_model, save_model

    config = ModelConfig(num_features=24, num_heads=2, num_layers=1, degrees=(1, 2))
    potential = init_model(config, elements=["H", "C", "O"], seed=3)
    assert potential.elements == (1, 6, 8) and potential.model.config == config
    save_model(potential, tmp_path / "m")
    assert load_model(tmp_path / "m").model.config == config
    atoms = molecule("CH3CH2OH")
    atoms.calc = SO3kratesCalculator(tmp_path / "m")
    assert atoms.get_forces().shape == (9, 3)
