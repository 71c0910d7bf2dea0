"""What a job takes from the machine that submits it, checked at submit: the code snapshot (snapshot), secrets by
reference (secrets), and paths the nodes must see (nodelocal).
"""
