"""BibTeX of the sources a built dataset comes from: each dataset card cites every source it uses."""

FACAP = """@article{garderes2025facap,
  title   = {{FACap}: A Large-scale Fashion Dataset for Fine-grained Composed Image Retrieval},
  author  = {Gard{\\`e}res, Fran{\\c{c}}ois and Chen, Shizhe and Gauthier, Camille-Sovanneary and Ponce, Jean},
  journal = {arXiv preprint arXiv:2507.07135},
  year    = {2025}
}"""

FASHIONIQ = """@inproceedings{wu2021fashioniq,
  title     = {Fashion {IQ}: A New Dataset Towards Retrieving Images by Natural Language Feedback},
  author    = {Wu, Hui and Gao, Yupeng and Guo, Xiaoxiao and Al-Halah, Ziad and Rennie, Steven and
               Grauman, Kristen and Feris, Rogerio},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {11307--11317},
  year      = {2021}
}"""

FASHION200K = """@inproceedings{han2017fashion200k,
  title     = {Automatic Spatially-aware Fashion Concept Discovery},
  author    = {Han, Xintong and Wu, Zuxuan and Huang, Phoenix X. and Zhang, Xiao and Zhu, Menglong and
               Li, Yuan and Zhao, Yang and Davis, Larry S.},
  booktitle = {Proceedings of the IEEE International Conference on Computer Vision (ICCV)},
  pages     = {1463--1471},
  year      = {2017}
}"""

CIRR = """@inproceedings{liu2021cirr,
  title     = {Image Retrieval on Real-Life Images With Pre-Trained Vision-and-Language Models},
  author    = {Liu, Zheyuan and Rodriguez-Opazo, Cristian and Teney, Damien and Gould, Stephen},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {2125--2134},
  year      = {2021}
}"""

NLVR2 = """@inproceedings{suhr2019nlvr2,
  title     = {A Corpus for Reasoning about Natural Language Grounded in Photographs},
  author    = {Suhr, Alane and Zhou, Stephanie and Zhang, Ally and Zhang, Iris and Bai, Huajun and Artzi, Yoav},
  booktitle = {Proceedings of the 57th Annual Meeting of the Association for Computational Linguistics (ACL)},
  pages     = {6418--6428},
  year      = {2019}
}"""
