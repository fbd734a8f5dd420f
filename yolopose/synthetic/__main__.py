"""``python -m yolopose.synthetic --out DIR [--preview sheet.png]``: write a synthetic dataset anywhere."""
from yolopose.synthetic.generate import main

if __name__ == "__main__":
    main()
