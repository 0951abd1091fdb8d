"""The local end-to-end run (`make demo`): the seed team's experiments at small scale on Fashion-MNIST."""
