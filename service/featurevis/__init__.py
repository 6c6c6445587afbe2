"""Feature visualisation by optimisation (Olah et al. 2017), DeepDream and inversion.

An image is parameterised (decorrelated Fourier space or plain pixels, :mod:`.param`), pushed
through random transformations (:mod:`.transforms`) and the model, and changed by Adam along
the gradient of an objective (:mod:`.objectives`) that reads one or more tensors of the graph.
The gradient comes from the companion graph whose score is the objective's tensor
(``ModelRunner.objective_gradient``); everything around the model — parameterisation,
transformations, preprocessing, priors — is differentiated here by its exact adjoint, in
numpy. :mod:`.optimize` holds the loop; docs/featurevis.md the formulas and defaults.
"""
