"""What Ray ships to workers, in the order data flows: feed → read → predict (classmap) → encode → sink.

Each stage module imports only what its stage needs (encode and sink never import torch;
read never imports torchvision), so worker processes start fast. Importing this package
imports none of them.
"""
