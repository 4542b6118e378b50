"""Code the tests share that is not itself a test: tiny models, example rows and clips, fault servers."""
